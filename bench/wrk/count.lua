-- wrk script: POST `{}` as JSON until WRK_REQUESTS responses have arrived
-- (then this thread stops), and print one line of JSON with the results, as
-- post.lua. For a fixed request count (the CPU-per-request measurement):
-- run with one thread (-t1) and a -d long enough to reach the count. wrk's
-- main thread sleeps for the whole -d whatever its threads do, so on reaching
-- the count this thread stops and sends wrk SIGINT (what Ctrl-C does), which
-- ends the sleep; wrk then reports as usual (duration up to the signal).
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"

local limit = tonumber(os.getenv("WRK_REQUESTS") or "20000")
local seen = 0

function response(status, headers, body)
  seen = seen + 1
  if seen == limit then
    wrk.thread:stop()
    -- io.popen, not os.execute: system() ignores SIGINT while its child runs.
    io.popen("kill -INT $PPID"):close() -- the shell's parent: wrk
    -- and tell whoever runs wrk, which signals it too (belt and braces)
    local marker = os.getenv("WRK_DONE_FILE")
    if marker then
      io.open(marker, "w"):close()
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%.0f,"p90":%.0f,"p99":%.0f,"p999":%.0f,"max":%.0f,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
