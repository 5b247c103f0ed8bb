"""Runs app.py under gunicorn with its defaults (one sync worker) on
127.0.0.1:$PORT.

An http function's command runs on the system python3, which does not look
in the function's installed dependencies (`.deps/python`, where flick's
deploy put requirements.txt) by itself: this puts them on sys.path first,
then hands over to gunicorn's own command line. The bench harness installs
the same requirements into the same place for the directly-started baseline.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, ".deps", "python")]

from gunicorn.app.wsgiapp import run  # noqa: E402

if __name__ == "__main__":
    sys.argv = ["gunicorn", "--bind", f"127.0.0.1:{os.environ['PORT']}", "--chdir", HERE, "app:app"]
    sys.exit(run())
