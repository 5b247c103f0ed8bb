"""The no-op handler served by Google's functions-framework.

functions-framework calls an HTTP function with a Flask request; returning a
dict makes Flask answer it as JSON, like flick's Lambda-style no-op.
"""


def handler(request):
    return {}
