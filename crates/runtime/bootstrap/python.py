# flick's Python bootstrap: the process behind one warm instance of a Python
# function. flick embeds this file, writes it to disk and starts it as
# `python3 -I python.py` in the function's code directory, with the protocol
# socket on fd 3 and stdout/stderr read as the function's logs. It imports the
# user's handler once, then serves invocations framed as one JSON header line
# plus `len` raw body bytes (see crates/runtime/src/protocol.rs).
#
# Started with FLICK_STEM=1 (and none of the function's variables) it is a
# stem cell: it does the function-independent work up front, sends
# {"type":"stem_ready"}, then waits for {"type":"specialise","env":{...}},
# takes on that environment and code directory, and starts as above. With
# FLICK_STEM=setuid (a sandboxed stem, uid 0 with CAP_SETUID/CAP_SETGID) the
# specialise frame must also carry a uid and gid: it switches to them and
# checks that no thread kept a capability before any function code runs.
#
# Started with FLICK_TEMPLATE=1 it is a fork template: it imports the handler,
# sends {"type":"template_ready"} (or init_error when a fork could not be
# trusted), then answers each {"type":"fork","env":{...}} message, which
# carries three descriptors (SCM_RIGHTS: protocol socket, stdout, stderr),
# by forking: the child takes them as fds 3, 1 and 2 and serves as a new
# instance; the template replies {"type":"forked","pid":N}.
#
# Standard library only, and it must keep working on Python 3.8.

import json
import os
import sys
import time

PROTOCOL_FD = 3
# Frames of this file are cut from the tracebacks users see: they are noise
# there. Taken from the code object, which is how frames name their file.
_BOOTSTRAP_FILE = sys._getframe().f_code.co_filename

_dumps = json.dumps
_loads = json.loads
_header_encoder = json.JSONEncoder(separators=(",", ":")).encode

TEXT = "text/plain; charset=utf-8"
JSON_CT = [["content-type", "application/json"]]
OCTET_CT = [["content-type", "application/octet-stream"]]
TEXT_CT = [["content-type", TEXT]]
OPENWHISK_WEB_KEYS = frozenset(("statusCode", "headers", "body"))
_BYTES = (bytes, bytearray, memoryview)


class InitError(Exception):
    def __init__(self, kind, message, cause=None):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message
        self.cause = cause


class MarshalError(Exception):
    pass


# --- the channel -------------------------------------------------------------


def _write_all(data):
    # A blocking socket normally takes it all at once; a signal can cut it.
    n = os.write(PROTOCOL_FD, data)
    if n != len(data):
        view = memoryview(data)[n:]
        while view:
            view = view[os.write(PROTOCOL_FD, view):]


_send_lock = None


def _send(header, body=b""):
    data = _header_encoder(header).encode() + b"\n"
    if body:
        # Above this size, a second write is cheaper than copying the body.
        if len(body) < 65536:
            data += body
            body = b""
    try:
        if _send_lock is None:
            _write_all(data)
            if body:
                _write_all(body)
        else:
            with _send_lock:
                _write_all(data)
                if body:
                    _write_all(body)
    except OSError:
        # flick is gone: nobody is left to answer.
        _exit(0)


def _exit(code):
    # os._exit: worker threads still in a handler must not hold the exit up.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _end_of_output(rid):
    # Everything the invocation wrote must reach the pipes before the marker,
    # and the marker before the answer: flick stops collecting at the marker.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if sys.stdout is not sys.__stdout__ or sys.stderr is not sys.__stderr__:
        for stream in (sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
    marker = b"\x1eflick-end " + str(rid).encode() + b"\n"
    for fd in (1, 2):
        try:
            os.write(fd, marker)
        except OSError:
            pass


# --- errors ------------------------------------------------------------------


def _format_exception(exc):
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == _BOOTSTRAP_FILE:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _message(exc):
    try:
        return str(exc)
    except Exception:
        return "<unprintable %s>" % type(exc).__name__


def _log_trace(text):
    try:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
    except Exception:
        pass


# Caps of an error as sent to flick (the full trace still goes to stderr, the
# logs). flick refuses a frame header over 64 KiB, so the encoded error must
# stay well under it, whatever a handler puts in its exception.
_MAX_MESSAGE = 4096
_MAX_TRACE_LINES = 64
_MAX_TRACE_LINE = 1024
_MAX_ERROR_BYTES = 32768


def _cap(text, limit):
    if len(text) <= limit:
        return text
    return "%s… [%d more characters]" % (text[:limit], len(text) - limit)


def _capped_error(kind, message, trace):
    """The error object of an error/init_error frame, cut to fit: JSON
    escaping can make text up to twelve times longer, so the encoded size is
    what is checked; the trace gives way first, then the message."""
    kind = _cap(str(kind), 256)
    message = _cap(message, _MAX_MESSAGE)
    if len(trace) > _MAX_TRACE_LINES:
        half = _MAX_TRACE_LINES // 2
        trace = trace[:half] + ["… [%d more lines]" % (len(trace) - 2 * half)] + trace[-half:]
    trace = [_cap(line, _MAX_TRACE_LINE) for line in trace]
    error = {"type": kind, "message": message, "trace": trace}
    while len(_header_encoder(error)) > _MAX_ERROR_BYTES:
        if error["trace"]:
            error["trace"] = error["trace"][len(error["trace"]) // 2 + 1 :]
        else:
            error["message"] = _cap(error["message"], len(error["message"]) // 2)
            error["type"] = _cap(error["type"], 64)
    return error


def _send_error(rid, exc, kind=None, message=None):
    text = _format_exception(exc)
    _log_trace(text)
    error = _capped_error(
        kind or type(exc).__name__,
        _message(exc) if message is None else message,
        text.splitlines(),
    )
    _end_of_output(rid)
    _send({"type": "error", "id": rid, "error": error})


# --- responses ---------------------------------------------------------------


def _header_value(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    return v if isinstance(v, str) else str(v)


def _http_response(d):
    status = d.get("statusCode", 200)
    status = 200 if status is None else int(status)
    if not 100 <= status <= 599:
        raise ValueError("statusCode %r is not an HTTP status" % (status,))
    headers = []
    multi = d.get("multiValueHeaders") or {}
    multi_names = set(str(k).lower() for k in multi)
    single = d.get("headers") or {}
    # As API Gateway: a name in multiValueHeaders takes its values from there.
    for k, v in single.items():
        k = str(k).lower()
        if k in multi_names:
            continue
        if isinstance(v, (list, tuple)):
            headers.extend([k, _header_value(x)] for x in v)
        else:
            headers.append([k, _header_value(v)])
    for k, vs in multi.items():
        k = str(k).lower()
        if not isinstance(vs, (list, tuple)):
            vs = (vs,)
        headers.extend([k, _header_value(x)] for x in vs)
    cookies = d.get("cookies")
    if cookies:
        headers.extend(["set-cookie", _header_value(c)] for c in cookies)

    body = d.get("body")
    if body is None:
        out, ctype = b"", TEXT
    elif isinstance(body, str):
        if d.get("isBase64Encoded"):
            import binascii

            out, ctype = binascii.a2b_base64(body), "application/octet-stream"
        else:
            out, ctype = body.encode("utf-8", "surrogateescape"), TEXT
    elif isinstance(body, _BYTES):
        out, ctype = bytes(body), "application/octet-stream"
    else:
        out, ctype = _dumps(body).encode(), "application/json"
    for k, _ in headers:
        if k == "content-type":
            break
    else:
        headers.append(["content-type", ctype])
    return status, headers, out


def _json_response(value):
    if isinstance(value, _BYTES):
        return 200, OCTET_CT, bytes(value)
    return 200, JSON_CT, _dumps(value).encode()


def _lambda_response(value):
    if isinstance(value, dict) and "statusCode" in value:
        return _http_response(value)
    return _json_response(value)


def _openwhisk_response(value):
    if isinstance(value, dict) and value and value.keys() <= OPENWHISK_WEB_KEYS:
        return _http_response(value)
    return _json_response(value)


def _openfaas_response(value):
    if isinstance(value, str):
        return 200, TEXT_CT, value.encode("utf-8", "surrogateescape")
    if value is None:
        return 200, [], b""
    return _json_response(value)



# --- API Gateway events ------------------------------------------------------


def _apigw_event(h, body):
    """An API Gateway HTTP API (payload format 2.0) event for the request."""
    headers = {}
    cookies = []
    for k, v in h.get("headers") or ():
        k = k.lower()
        if k == "cookie":
            cookies.extend(c.strip() for c in v.split(";") if c.strip())
        elif k in headers:
            # As API Gateway: repeated headers are joined with commas.
            headers[k] = headers[k] + "," + v
        else:
            headers[k] = v
    query = h.get("query") or ""
    path = h.get("path") or "/"
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": h.get("raw_path") or path,
        "rawQueryString": query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if query:
        from urllib.parse import parse_qsl

        params = {}
        for k, v in parse_qsl(query, keep_blank_values=True):
            params[k] = params[k] + "," + v if k in params else v
        event["queryStringParameters"] = params
    now = time.time()
    host = headers.get("host", "localhost")
    arn = os.environ.get("FLICK_FUNCTION_ARN", "").split(":")
    event["requestContext"] = {
        "accountId": arn[4] if len(arn) > 4 and arn[4] else "000000000000",
        "apiId": "flick",
        "domainName": host,
        "domainPrefix": host.split(".", 1)[0],
        "http": {
            "method": h.get("method") or "GET",
            "path": path,
            "protocol": "HTTP/1.1",
            # flick is not told the peer's address; a proxy's word, else loopback.
            "sourceIp": headers.get("x-forwarded-for", "").split(",")[0].strip() or "127.0.0.1",
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": h.get("id"),
        "routeKey": "$default",
        "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": int(now * 1000),
    }
    if body:
        try:
            event["body"] = body.decode("utf-8")
            event["isBase64Encoded"] = False
        except UnicodeDecodeError:
            import base64

            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    else:
        event["isBase64Encoded"] = False
    return event


# --- a Flask-like request (GCF, OpenFaaS python3-http) ------------------------
#
# What functions-framework and the OpenFaaS template hand a handler is Flask's
# request. Flask itself costs tens of milliseconds to import, so this is the
# part of it handlers use, built from the frame.


class HTTPException(Exception):
    """An error with an HTTP status, answered as Flask would (werkzeug's
    BadRequest, UnsupportedMediaType)."""

    code = 500
    name = "Internal Server Error"

    def __init__(self, description=None):
        Exception.__init__(self, description or self.name)
        self.description = description or self.name


class BadRequest(HTTPException):
    code = 400
    name = "Bad Request"


class BadRequestKeyError(BadRequest, KeyError):
    def __init__(self, key):
        BadRequest.__init__(self, "The browser (or proxy) sent a request that this server could not understand.")
        self.key = key


class UnsupportedMediaType(HTTPException):
    code = 415
    name = "Unsupported Media Type"


class MultiDict(dict):
    """werkzeug's MultiDict: a dict of each key's first value that also keeps
    every value (`getlist`)."""

    def __init__(self, pairs=()):
        dict.__init__(self)
        self._lists = {}
        for k, v in pairs:
            if k in self._lists:
                self._lists[k].append(v)
            else:
                self._lists[k] = [v]
                dict.__setitem__(self, k, v)

    def __getitem__(self, key):
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            raise BadRequestKeyError(key)

    def get(self, key, default=None, type=None):
        try:
            value = dict.__getitem__(self, key)
        except KeyError:
            return default
        if type is None:
            return value
        try:
            return type(value)
        except (ValueError, TypeError):
            return default

    def getlist(self, key, type=None):
        values = self._lists.get(key, [])
        if type is None:
            return list(values)
        out = []
        for v in values:
            try:
                out.append(type(v))
            except (ValueError, TypeError):
                pass
        return out

    def items(self, multi=False):
        if not multi:
            return dict.items(self)
        return [(k, v) for k, vs in self._lists.items() for v in vs]

    def lists(self):
        return [(k, list(vs)) for k, vs in self._lists.items()]

    def to_dict(self, flat=True):
        return dict(dict.items(self)) if flat else {k: list(vs) for k, vs in self._lists.items()}

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self.items(multi=True))


class ImmutableMultiDict(MultiDict):
    pass


class Headers(object):
    """werkzeug's request headers: case-insensitive lookups, names shown
    Title-Cased, iteration yields (name, value) pairs."""

    def __init__(self, pairs):
        self._list = [(str(k), str(v)) for k, v in pairs]

    @staticmethod
    def _title(name):
        return "-".join(w[:1].upper() + w[1:] for w in name.split("-"))

    def get(self, key, default=None, type=None):
        key = key.lower()
        for k, v in self._list:
            if k.lower() == key:
                if type is None:
                    return v
                try:
                    return type(v)
                except (ValueError, TypeError):
                    return default
        return default

    def getlist(self, key, type=None):
        key = key.lower()
        out = []
        for k, v in self._list:
            if k.lower() == key:
                if type is None:
                    out.append(v)
                else:
                    try:
                        out.append(type(v))
                    except (ValueError, TypeError):
                        pass
        return out

    get_all = getlist

    def __getitem__(self, key):
        value = self.get(key)
        if value is None:
            raise BadRequestKeyError(key)
        return value

    def __contains__(self, key):
        return self.get(key) is not None

    def __iter__(self):
        return iter(self.items())

    def __len__(self):
        return len(self._list)

    def keys(self, lower=False):
        return [k.lower() if lower else self._title(k) for k, _ in self._list]

    def values(self):
        return [v for _, v in self._list]

    def items(self, lower=False):
        return [(k.lower() if lower else self._title(k), v) for k, v in self._list]

    def to_wsgi_list(self):
        return self.items()

    def __repr__(self):
        return "Headers(%r)" % (self.items(),)


class FileStorage(object):
    """An uploaded file of a multipart form (`request.files`)."""

    def __init__(self, data, filename, name, content_type):
        import io

        self.stream = io.BytesIO(data)
        self.filename = filename
        self.name = name
        self.content_type = content_type
        self.mimetype = (content_type or "").split(";")[0].strip().lower()

    def read(self, *args):
        return self.stream.read(*args)

    def save(self, dst):
        data = self.stream.getvalue()
        if isinstance(dst, str):
            with open(dst, "wb") as f:
                f.write(data)
        else:
            dst.write(data)

    def __repr__(self):
        return "<FileStorage: %r (%r)>" % (self.filename, self.content_type)


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class _Request(object):
    """The request as a Flask view sees it."""

    def __init__(self, h, body):
        from urllib.parse import parse_qsl

        self.method = (h.get("method") or "GET").upper()
        self.path = h.get("path") or "/"
        query = h.get("query") or ""
        self.query_string = query.encode("latin-1", "replace")
        self.args = ImmutableMultiDict(parse_qsl(query, keep_blank_values=True))
        self.headers = Headers(h.get("headers") or ())
        self._body = body
        self._form = None
        self._files = None
        self._json = _UNSET
        self.content_type = self.headers.get("content-type")
        ct = self.content_type or ""
        self.mimetype = ct.split(";")[0].strip().lower()
        self.mimetype_params = {}
        for part in ct.split(";")[1:]:
            k, _, v = part.partition("=")
            if k.strip():
                self.mimetype_params[k.strip().lower()] = v.strip().strip('"')
        self.content_length = len(body)
        self.content_encoding = self.headers.get("content-encoding")
        self.scheme = "http"
        self.host = self.headers.get("host", "localhost")
        self.remote_addr = (self.headers.get("x-forwarded-for") or "").split(",")[0].strip() or "127.0.0.1"
        self.access_route = [self.remote_addr]
        self.user_agent = _UserAgent(self.headers.get("user-agent", ""))
        self.host_url = "%s://%s/" % (self.scheme, self.host)
        self.url_root = self.host_url
        self.base_url = self.host_url.rstrip("/") + self.path
        self.url = self.base_url + ("?" + query if query else "")
        self.full_path = self.path + "?" + query
        self.endpoint = None
        self.view_args = {}
        cookies = []
        for header in self.headers.getlist("cookie"):
            for c in header.split(";"):
                k, eq, v = c.strip().partition("=")
                if eq:
                    cookies.append((k, v))
        self.cookies = ImmutableMultiDict(cookies)
        self.environ = {
            "REQUEST_METHOD": self.method,
            "PATH_INFO": self.path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": ct,
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.remote_addr,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": self.scheme,
        }
        for k, v in self.headers.items(lower=True):
            self.environ.setdefault("HTTP_" + k.upper().replace("-", "_"), v)

    @property
    def is_json(self):
        mt = self.mimetype
        return mt == "application/json" or (mt.startswith("application/") and mt.endswith("+json"))

    def get_data(self, cache=True, as_text=False, parse_form_data=False):
        data = self._body
        if parse_form_data and self.mimetype in _FORM_TYPES:
            self._parse_form()
            data = b""
        return data.decode("utf-8", "replace") if as_text else data

    @property
    def data(self):
        # As werkzeug: a form's body is read as the form, not as data.
        return self.get_data(parse_form_data=True)

    def get_json(self, force=False, silent=False, cache=True):
        if self._json is not _UNSET and cache:
            return self._json
        if not (force or self.is_json):
            if silent:
                return None
            raise UnsupportedMediaType(
                "Did not attempt to load JSON data because the request Content-Type was not 'application/json'."
            )
        try:
            value = _loads(self._body)
        except (ValueError, RecursionError) as e:
            if silent:
                return None
            raise BadRequest("Failed to decode JSON object: %s" % e)
        if cache:
            self._json = value
        return value

    @property
    def json(self):
        return self.get_json()

    def _parse_form(self):
        if self._form is not None:
            return
        form, files = [], []
        if self.mimetype == "application/x-www-form-urlencoded":
            from urllib.parse import parse_qsl

            form = parse_qsl(self._body.decode("utf-8", "replace"), keep_blank_values=True)
        elif self.mimetype == "multipart/form-data" and self.mimetype_params.get("boundary"):
            form, files = _multipart(self._body, self.content_type)
        self._form = ImmutableMultiDict(form)
        self._files = ImmutableMultiDict(files)

    @property
    def form(self):
        self._parse_form()
        return self._form

    @property
    def files(self):
        self._parse_form()
        return self._files

    @property
    def values(self):
        # As werkzeug 2+: a GET's values are its query arguments alone.
        pairs = list(self.args.items(multi=True))
        if self.method != "GET":
            pairs += self.form.items(multi=True)
        return ImmutableMultiDict(pairs)

    def __repr__(self):
        return "<Request %r [%s]>" % (self.url, self.method)


_UNSET = object()


class _UserAgent(str):
    """`request.user_agent`: the header's text (werkzeug's UserAgent prints as it)."""

    @property
    def string(self):
        return str(self)


def _multipart(body, content_type):
    """(fields, files) of a multipart/form-data body, with the standard
    library's MIME parser."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body
    )
    fields, files = [], []
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name is None:
            continue
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files.append((name, FileStorage(data, filename, name, part.get("content-type"))))
        else:
            charset = part.get_content_charset() or "utf-8"
            fields.append((name, data.decode(charset, "replace")))
    return fields, files


# --- Flask-style answers -----------------------------------------------------

HTML_CT = "text/html; charset=utf-8"


def _flask_json(value):
    # Flask's jsonify outside debug mode: compact, sorted keys, a newline.
    return (_dumps(value, separators=(",", ":"), sort_keys=True) + "\n").encode()


def _flask_status(status):
    if isinstance(status, int):
        return status
    text = str(status).strip()
    code = text.split(" ", 1)[0]
    if not code.isdigit():
        raise TypeError("The status %r is not an HTTP status" % (status,))
    return int(code)


def _flask_headers(headers):
    if headers is None:
        return []
    items = headers.items() if hasattr(headers, "items") else headers
    return [[str(k).lower(), _header_value(v)] for k, v in items]


def _flask_response(value):
    """A view's return value as Flask turns it into a response: str and bytes
    (text/html), dict and list (JSON), a tuple (body, status[, headers]) or
    (body, headers), a Response-like object, an iterable of chunks."""
    status, headers = None, []
    if isinstance(value, HTTPException):
        text = "<!doctype html>\n<html lang=en>\n<title>%d %s</title>\n<h1>%s</h1>\n<p>%s</p>\n" % (
            value.code,
            value.name,
            value.name,
            value.description,
        )
        return value.code, [["content-type", HTML_CT]], text.encode()
    if isinstance(value, tuple):
        if len(value) == 3:
            value, status, extra = value
            headers = _flask_headers(extra)
        elif len(value) == 2:
            value, second = value
            if isinstance(second, (dict, list, Headers)) or hasattr(second, "items"):
                headers = _flask_headers(second)
            else:
                status = second
        else:
            raise TypeError(
                "The view function did not return a valid response tuple. The tuple must have the form "
                "(body, status, headers), (body, status), or (body, headers)."
            )
    if value is None:
        raise TypeError(
            "The view function did not return a valid response. The function either returned None or "
            "ended without a return statement."
        )
    if isinstance(value, str):
        code, base, out = 200, [["content-type", HTML_CT]], value.encode("utf-8", "surrogateescape")
    elif isinstance(value, _BYTES):
        code, base, out = 200, [["content-type", HTML_CT]], bytes(value)
    elif isinstance(value, (dict, list)):
        code, base, out = 200, JSON_CT, _flask_json(value)
    elif hasattr(value, "status_code") and hasattr(value, "get_data"):
        # A werkzeug/Flask Response the handler made itself.
        code = int(value.status_code)
        base = _flask_headers(value.headers)
        out = value.get_data()
    elif hasattr(value, "__iter__"):
        chunks = [c.encode("utf-8") if isinstance(c, str) else bytes(c) for c in value]
        code, base, out = 200, [["content-type", HTML_CT]], b"".join(chunks)
    else:
        raise TypeError(
            "The view function did not return a valid response. The return type must be a string, dict, "
            "list, tuple with headers or status, Response instance, or WSGI callable, but it was a %s."
            % type(value).__name__
        )
    if status is not None:
        code = _flask_status(status)
    if not 100 <= code <= 599:
        raise ValueError("status %r is not an HTTP status" % (code,))
    # As Flask's headers.update: the view's headers replace defaults of the same name.
    names = set(k for k, _ in headers)
    return code, [h for h in base if h[0] not in names] + headers, out


class _OpenFaasEvent(object):
    """The OpenFaaS python3-http template's `event`."""

    __slots__ = ("body", "headers", "method", "query", "path")

    def __init__(self, request):
        self.body = request.get_data()
        self.headers = request.headers
        self.method = request.method
        self.query = request.args
        self.path = request.path


class _OpenFaasContext(object):
    """The OpenFaaS python3-http template's `context`."""

    def __init__(self):
        self.hostname = os.environ.get("HOSTNAME", "localhost")


def _openfaas_http_response(value):
    # As the template's format_response, then Flask.
    if isinstance(value, HTTPException):
        return _flask_response(value)
    if value is None:
        return _flask_response("")
    if isinstance(value, dict):
        status = value.get("statusCode", 200)
        body = value.get("body", "")
        if not isinstance(body, (dict, _BYTES)):
            body = str(body)
        headers = value.get("headers") or []
        return _flask_response((body, status, headers))
    return _flask_response(value)


# --- calling the handler -----------------------------------------------------


def _parse_event(body):
    if not body:
        return {}
    try:
        return _loads(body)
    except (ValueError, RecursionError):
        return body.decode("utf-8", "replace")


class CognitoIdentity(object):
    """`context.identity`, as awslambdaric gives it (empty unless a caller
    sent a Cognito identity, which only Lambda's mobile SDKs do)."""

    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, identity=None):
        identity = identity if isinstance(identity, dict) else {}
        self.cognito_identity_id = identity.get("cognitoIdentityId")
        self.cognito_identity_pool_id = identity.get("cognitoIdentityPoolId")


class Client(object):
    __slots__ = ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name")

    def __init__(self, d):
        for name in self.__slots__:
            setattr(self, name, d.get(name))


class ClientContext(object):
    """`context.client_context`: the caller's X-Amz-Client-Context."""

    __slots__ = ("client", "custom", "env")

    def __init__(self, d):
        client = d.get("client")
        self.client = Client(client) if isinstance(client, dict) else None
        self.custom = d.get("custom")
        self.env = d.get("env")


def _client_context(text):
    """The frame's client_context (base64 of a JSON object, as the caller sent
    X-Amz-Client-Context), or None when absent or not that."""
    if not text:
        return None
    import base64

    try:
        d = _loads(base64.b64decode(text, validate=True))
    except (ValueError, TypeError, RecursionError):
        return None
    return ClientContext(d) if isinstance(d, dict) else None


def _make_context_class():
    name = os.environ.get("FLICK_FUNCTION_NAME", "")
    version = os.environ.get("FLICK_FUNCTION_REVISION", "")
    try:
        memory = int(os.environ.get("FLICK_MEMORY_MB", "0"))
    except ValueError:
        memory = 0
    stream = "%s/[%s]%s" % (time.strftime("%Y/%m/%d", time.gmtime()), version, os.urandom(16).hex())

    class LambdaContext(object):
        """What AWS Lambda passes as `context`, plus flick's `http`."""

        function_name = name
        function_version = version
        memory_limit_in_mb = memory
        # FLICK_FUNCTION_ARN carries the region and account flick is configured with.
        invoked_function_arn = os.environ.get("FLICK_FUNCTION_ARN") or (
            "arn:aws:lambda:local:000000000000:function:" + name
        )
        log_group_name = "/aws/lambda/" + name
        log_stream_name = stream
        client_context = None

        def __init__(self, h, http):
            self.aws_request_id = h.get("id")
            self.http = http
            self._deadline_ms = h.get("deadline_ms") or 0
            self.identity = CognitoIdentity()
            cc = h.get("client_context")
            if cc:
                self.client_context = _client_context(cc)
            # The W3C trace context: flick's span for this call as the parent
            # to pass on to whatever the handler calls.
            tp = h.get("traceparent")
            self.traceparent = tp
            self.tracestate = h.get("tracestate")
            self.trace_id = tp[3:35] if isinstance(tp, str) and len(tp) == 55 else None
            self.span_id = tp[36:52] if isinstance(tp, str) and len(tp) == 55 else None

        def get_remaining_time_in_millis(self):
            left = self._deadline_ms - int(time.time() * 1000)
            return left if left > 0 else 0

        def __repr__(self):
            return (
                "LambdaContext(aws_request_id=%r, function_name=%r, function_version=%r, "
                "memory_limit_in_mb=%r, invoked_function_arn=%r, log_group_name=%r, "
                "log_stream_name=%r, http=%r)"
                % (
                    self.aws_request_id,
                    self.function_name,
                    self.function_version,
                    self.memory_limit_in_mb,
                    self.invoked_function_arn,
                    self.log_group_name,
                    self.log_stream_name,
                    self.http,
                )
            )

    return LambdaContext


def _http_info(h):
    return {
        "method": h.get("method", ""),
        "path": h.get("path", "/"),
        "query": h.get("query", ""),
        "headers": dict(h.get("headers") or ()),
    }


def _make_callers(fn, shape, explicit=False):
    """{presentation: (call, to_response)}: how the handler is called and its
    value read, for a request shown as HTTP and for one whose body is the
    event itself (`direct`: Lambda's Invoke, OpenWhisk's action invoke).
    Everything that depends only on the shape is settled here, once, so the
    per-call path is one closure call."""
    if shape == "lambda":
        Context = _make_context_class()

        if explicit:
            # Declared a Lambda function: over HTTP it gets what API Gateway
            # (HTTP API, payload 2.0) would give it.
            def call(h, body):
                return fn(_apigw_event(h, body), Context(h, _http_info(h)))

        else:

            def call(h, body):
                return fn(_parse_event(body), Context(h, _http_info(h)))

        def call_direct(h, body):
            return fn(_parse_event(body), Context(h, None))

        # Direct: the JSON of the return value is the answer, verbatim; a
        # dict with a statusCode is an event's result like any other.
        return {"http": (call, _lambda_response), "direct": (call_direct, _json_response)}

    if shape == "gcf":
        # Google Cloud Functions: fn(request), answered as Flask answers a view.
        def call(h, body):
            try:
                return fn(_Request(h, body))
            except HTTPException as e:
                return e

        return {"http": (call, _flask_response), "direct": (call, _flask_response)}

    if shape == "openfaas-http":
        # OpenFaaS python3-http template: handle(event, context).
        ofcontext = _OpenFaasContext()

        def call(h, body):
            try:
                return fn(_OpenFaasEvent(_Request(h, body)), ofcontext)
            except HTTPException as e:
                return e

        return {"http": (call, _openfaas_http_response), "direct": (call, _openfaas_http_response)}

    if shape == "openwhisk":
        from urllib.parse import parse_qsl

        def call(h, body):
            q = h.get("query")
            args = dict(parse_qsl(q, keep_blank_values=True)) if q else {}
            if body:
                try:
                    parsed = _loads(body)
                except (ValueError, RecursionError):
                    parsed = None
                if isinstance(parsed, dict):
                    args.update(parsed)
                else:
                    args["__ow_body"] = body.decode("utf-8", "replace")
            args["__ow_method"] = (h.get("method") or "").lower()
            args["__ow_headers"] = dict(h.get("headers") or ())
            args["__ow_path"] = h.get("path", "/")
            return fn(args)

        def call_direct(h, body):
            # The params alone, as a non-web action gets them: no __ow_* fields.
            return fn(_parse_event(body))

        return {"http": (call, _openwhisk_response), "direct": (call_direct, _json_response)}

    if shape == "openfaas":

        def call(h, body):
            return fn(body.decode("utf-8", "replace"))

        return {"http": (call, _openfaas_response), "direct": (call, _openfaas_response)}

    def call(h, body):
        return fn()

    return {"http": (call, _openfaas_response), "direct": (call, _openfaas_response)}


def _signature(fn):
    """(positional parameter count, is a coroutine function), without inspect
    when the plain code object tells (inspect costs milliseconds to import)."""
    target, drop = fn, 0
    if getattr(fn, "__self__", None) is not None and hasattr(fn, "__func__"):
        target, drop = fn.__func__, 1
    code = getattr(target, "__code__", None)
    if code is not None and not hasattr(target, "__wrapped__"):
        if code.co_flags & 0x04:  # CO_VARARGS
            count = 1 << 30
        else:
            count = code.co_argcount - drop
        return count, bool(code.co_flags & 0x80)  # CO_COROUTINE
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2, False
    count = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            count = 1 << 30
            break
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    is_coro = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))
    return count, is_coro


def _load_handler():
    spec = os.environ.get("FLICK_HANDLER", "")
    module_name, _, fn_name = spec.rpartition(".")
    module_name = module_name.replace("/", ".").strip(".")
    if not module_name or not fn_name or not fn_name.isidentifier():
        raise InitError(
            "Runtime.MalformedHandlerName",
            "Bad handler '%s': expected 'module.function', e.g. 'main.handler'" % spec,
        )
    try:
        __import__(module_name)
        module = sys.modules[module_name]
    except SyntaxError as e:
        raise InitError("Runtime.UserCodeSyntaxError", "Syntax error in module '%s': %s" % (module_name, e), e)
    except BaseException as e:
        raise InitError(
            "Runtime.ImportModuleError", "Unable to import module '%s': %s" % (module_name, _message(e)), e
        )
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise InitError("Runtime.HandlerNotFound", "Handler '%s' missing on module '%s'" % (fn_name, module_name))
    if not callable(fn):
        raise InitError(
            "Runtime.HandlerNotFound", "Handler '%s' on module '%s' is not callable" % (fn_name, module_name)
        )
    count, is_coro = _signature(fn)
    shape = os.environ.get("FLICK_SHAPE") or "auto"
    if shape == "auto":
        if count >= 2:
            # handler.handle(event, context) is the OpenFaaS python3-http
            # template's layout; any other two-parameter handler is Lambda's.
            shape = "openfaas-http" if (module_name, fn_name) == ("handler", "handle") else "lambda"
        elif count == 1:
            shape = "openwhisk" if fn_name == "main" else "openfaas"
        else:
            shape = "bare"
        explicit = False
    elif shape in ("lambda", "openwhisk", "openfaas", "gcf"):
        if shape == "openfaas" and count >= 2:
            shape = "openfaas-http"
        explicit = True
    else:
        raise InitError("Runtime.InitError", "Unknown handler shape '%s' (FLICK_SHAPE)" % shape)
    return fn, shape, explicit, is_coro


# --- serving -----------------------------------------------------------------


class _Loop(object):
    """The one asyncio event loop of this instance, created on first need, so
    loop-bound objects a handler keeps between calls (sessions, locks) stay
    valid. Inline mode runs it per call; concurrent mode runs it in a thread."""

    def __init__(self, threaded):
        self.threaded = threaded
        self.loop = None
        self.lock = None

    def get(self):
        if self.loop is None:
            import asyncio

            if self.threaded:
                import threading

                with _start_lock:
                    if self.loop is None:
                        loop = asyncio.new_event_loop()
                        threading.Thread(target=loop.run_forever, name="flick-asyncio", daemon=True).start()
                        self.loop = loop
            else:
                self.loop = asyncio.new_event_loop()
                asyncio.set_event_loop(self.loop)
        return self.loop

    def wait(self, awaitable):
        # For a sync handler that returned an awaitable (e.g. a decorator
        # wrapping an async def): it must run on the instance's one loop.
        loop = self.get()
        if not self.threaded:
            return loop.run_until_complete(awaitable)
        import asyncio

        async def wrapper():
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result()


_start_lock = None


def _respond(rid, value, to_response):
    try:
        status, headers, out = to_response(value)
    except Exception as e:
        _send_error(rid, e, "Runtime.MarshalError", "Unable to marshal response: %s" % _message(e))
        return
    _end_of_output(rid)
    _send({"type": "result", "id": rid, "status": status, "headers": headers, "len": len(out)}, out)


def _serve(channel, fn, shape, explicit, is_coro, concurrency):
    global _send_lock, _start_lock

    callers = _make_callers(fn, shape, explicit)
    # A presentation this bootstrap does not know (a newer flick) is shown as HTTP.
    http_caller = callers["http"]
    if concurrency > 1:
        import threading

        _send_lock = threading.Lock()
        _start_lock = threading.Lock()
    loop = _Loop(threaded=concurrency > 1)

    def invoke(h, body):
        rid = h.get("id")
        call, to_response = callers.get(h.get("presentation"), http_caller)
        try:
            value = call(h, body)
            if hasattr(type(value), "__await__"):
                value = loop.wait(value)
        except BaseException as e:
            _send_error(rid, e)
            return
        _respond(rid, value, to_response)

    async def invoke_async(h, body):
        rid = h.get("id")
        call, to_response = callers.get(h.get("presentation"), http_caller)
        try:
            value = call(h, body)
            if hasattr(type(value), "__await__"):
                value = await value
        except BaseException as e:
            _send_error(rid, e)
            return
        _respond(rid, value, to_response)

    if concurrency == 1:
        dispatch = invoke
    elif is_coro:
        import asyncio

        run_threadsafe = asyncio.run_coroutine_threadsafe
        aloop = loop.get()

        def dispatch(h, body):
            run_threadsafe(invoke_async(h, body), aloop)

    else:
        from concurrent.futures import ThreadPoolExecutor

        submit = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="flick-invoke").submit

        def dispatch(h, body):
            submit(invoke, h, body)

    readline = channel.readline
    read = channel.read
    while True:
        line = readline()
        if not line.endswith(b"\n"):
            break  # EOF, possibly mid-frame: flick closed the channel
        h = _loads(line)
        n = h.get("len") or 0
        body = read(n) if n else b""
        if len(body) != n:
            break
        if h.get("type") == "invoke":
            dispatch(h, body)
        # Other frame types are from a newer flick; skip them.
    _exit(0)


def _init_failed(kind, message, text):
    """Reports a start that cannot serve and exits 1."""
    _log_trace(text)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    error = _capped_error(kind, message, text.splitlines())
    try:
        _write_all(_header_encoder({"type": "init_error", "error": error}).encode() + b"\n")
    except OSError:
        pass
    _exit(1)


# --- stem cells --------------------------------------------------------------

# What the bootstrap imports lazily, on the paths that need it (errors, shapes,
# concurrency): a stem cell imports it while no function waits. Not asyncio:
# it would add ~9 MiB to every idle stem cell and ~27 ms to its start, for
# the few handlers that are coroutines (they import it on their first call).
_PREWARM = (
    "traceback",
    "inspect",
    "binascii",
    "base64",
    "urllib.parse",
    "threading",
    "concurrent.futures.thread",
    # For _empty_capabilities, on every specialise of a sandboxed stem.
    "ctypes",
)


def _prewarm():
    for name in _PREWARM:
        try:
            __import__(name)
        except Exception:
            pass


def _empty_capabilities():
    """Empties this thread's capability sets with capset(2), which needs no
    privilege to lower them. Leaving uid 0 cleared all but the inheritable
    set, which only the process itself can empty. False without ctypes."""
    try:
        import ctypes
    except ImportError:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    # _LINUX_CAPABILITY_VERSION_3, this thread; then two halves of
    # (effective, permitted, inheritable), all zero.
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    if libc.capset(header, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "capset: %s" % os.strerror(err))
    return True


def _unprivileged_or_fail(inheritable_too):
    """Raises unless every thread of this process has left uid and gid 0
    (real, effective, saved and filesystem ids) and holds no capability, as
    the kernel reports it: the function's code must never run otherwise."""
    sets = ("CapPrm", "CapEff", "CapAmb", "CapBnd") + (("CapInh",) if inheritable_too else ())
    for task in os.listdir("/proc/self/task"):
        with open("/proc/self/task/%s/status" % task) as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        for key in ("Uid", "Gid"):
            if "0" in status[key].split():
                raise PermissionError("thread %s still has %s %s" % (task, key.lower(), status[key].split()))
        for key in sets:
            if int(status.get(key, "0"), 16):
                raise PermissionError("thread %s still holds capabilities: %s %s" % (task, key, status[key].strip()))


def _stem_cell(channel):
    """Prewarms, sends stem_ready, waits to be told which function this
    process is, and becomes it: its environment, its code directory as cwd.
    The caller then starts as it would have with that environment."""
    stem_mode = os.environ.get("FLICK_STEM")
    try:
        # By path: flick mounts the code over this directory later, and only a
        # fresh lookup of the path sees the mount (the old handle does not).
        stem_dir = os.getcwd()
    except OSError:
        stem_dir = None
    _prewarm()
    _send({"type": "stem_ready"})

    readline = channel.readline
    read = channel.read
    while True:
        line = readline()
        if not line.endswith(b"\n"):
            _exit(0)  # EOF: flick has no use for this cell
        h = _loads(line)
        n = h.get("len") or 0
        if n and len(read(n)) != n:
            _exit(0)
        if h.get("type") == "specialise":
            break
        # Other frame types are from a newer flick; skip them.

    try:
        uid = h.get("uid")
        if uid is not None:
            # The stem ran as uid 0 with CAP_SETUID/CAP_SETGID only; leaving
            # uid 0 clears those too, before any of the function's code runs.
            gid = h.get("gid", uid)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            _unprivileged_or_fail(_empty_capabilities())
        elif stem_mode == "setuid":
            # A sandboxed stem is still uid 0: it must never run a function so.
            raise PermissionError("flick sent no uid to switch to")
        env = h.get("env") or {}
        if not isinstance(env, dict):
            raise TypeError("env is a %s, not an object" % type(env).__name__)
        os.environ.update((str(k), v if isinstance(v, str) else str(v)) for k, v in env.items())
        os.environ.pop("FLICK_STEM", None)
        if "TZ" in env:
            time.tzset()
        code_dir = os.environ.get("FLICK_CODE_DIR") or stem_dir
        if not code_dir:
            raise ValueError("no FLICK_CODE_DIR, and the start directory is gone")
        os.chdir(code_dir)
    except Exception as e:
        _init_failed("Runtime.InitError", "Unable to specialise: %s" % _message(e), _format_exception(e))


# --- fork templates -----------------------------------------------------------


def _fork_unsafe():
    """Why forks of this process could not be trusted, or None: a running
    thread (a fork keeps only the forking one, with whatever locks the others
    held) or an open connection (every fork would share it)."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return "the handler's import left %d threads running" % (threading.active_count() - 1)
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return "cannot list open descriptors"
    for name in fds:
        if name == str(PROTOCOL_FD):
            continue
        try:
            target = os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue
        if target.startswith("socket:"):
            return "the handler's import left a socket open (fd %s)" % name
    return None


def _reseed():
    # `random` reseeds itself in a fork (os.register_at_fork); numpy's global
    # generator does not, and forks must not draw the same numbers.
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        try:
            np_random.seed()
        except Exception:
            pass


def _template():
    """Serves fork requests until flick closes the channel; returns only in
    a fork, which then starts as a new instance."""
    import array
    import signal
    import socket

    reason = _fork_unsafe()
    if reason:
        _init_failed("Runtime.TemplateRefused", "not a fork template: " + reason, reason + "\n")
    # Forks are reaped by the kernel; they report to flick, not to us.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, PROTOCOL_FD)
    _send({"type": "template_ready"})
    size = array.array("i").itemsize
    while True:
        msg, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(4 * size))
        if not msg:
            _exit(0)
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % size])
        try:
            h = _loads(msg)
        except ValueError:
            h = {}
        if not isinstance(h, dict) or h.get("type") != "fork" or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            _send({"type": "fork_error"})
            continue
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        pid = os.fork()
        if pid == 0:
            sock.detach()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.dup2(fds[0], PROTOCOL_FD, inheritable=False)
            os.dup2(fds[1], 1)
            os.dup2(fds[2], 2)
            for fd in fds:
                os.close(fd)
            env = h.get("env") or {}
            if isinstance(env, dict):
                os.environ.update((str(k), str(v)) for k, v in env.items())
            _reseed()
            return
        for fd in fds:
            os.close(fd)
        _send({"type": "forked", "pid": pid})


# --- start -------------------------------------------------------------------


def _site_packages():
    """What `site` would have done at start-up (flick starts python with
    -S), less the `.pth` hooks: the interpreter's site-packages importable,
    `exit()` and `quit()` defined. The hooks of the host's site-packages are
    the host's set-up, not the function's, and cost a cold start tens of ms."""
    if sys.flags.no_site:
        import site

        sys.path.extend(p for p in site.getsitepackages() if p not in sys.path)
        site.setquit()


def main():
    # Logs reach flick as they are written, not when a block buffer fills.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except Exception:
            pass
    os.set_blocking(PROTOCOL_FD, True)
    # Processes the handler starts must not hold the channel open after us.
    os.set_inheritable(PROTOCOL_FD, False)
    channel = open(PROTOCOL_FD, "rb", buffering=1 << 16, closefd=False)

    here = os.path.dirname(os.path.abspath(_BOOTSTRAP_FILE))
    # -I keeps the script's directory off sys.path; make sure of it, since
    # `import python` must not find this file.
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != here]
    _site_packages()

    # Not for the function to see: a template's forks are its instances.
    template = os.environ.pop("FLICK_TEMPLATE", None) == "1"
    if os.environ.get("FLICK_STEM"):
        _stem_cell(channel)

    # From here on the function is known: everything its environment decides
    # is read now, whether this process started as it or as a stem cell.
    code_dir = os.environ.get("FLICK_CODE_DIR") or os.getcwd()
    sys.path[:0] = [code_dir, os.path.join(code_dir, ".deps", "python")]

    try:
        concurrency = max(1, int(os.environ.get("FLICK_CONCURRENCY") or 1))
    except ValueError:
        concurrency = 1

    began = time.monotonic()
    try:
        fn, shape, explicit, is_coro = _load_handler()
    except InitError as e:
        if e.cause is not None:
            text = _format_exception(e.cause)
        else:
            text = "%s: %s\n" % (e.kind, e.message)
        _init_failed(e.kind, e.message, text)

    # Output of the import belongs to no invocation; flick keeps it for the first.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if template:
        _template()
        # A fork imported nothing: its ready frame says so by omission.
        _send({"type": "ready"})
    else:
        _send({"type": "ready", "import_s": time.monotonic() - began})
    _serve(channel, fn, shape, explicit, is_coro, concurrency)


if __name__ == "__main__":
    main()
