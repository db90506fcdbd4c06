"""The log of `digest serve`: uvicorn's own configuration, with a request that breaks HTTP (a malformed chunked
body, a garbled request line) as one line naming what was wrong, not a 46-line traceback of h11's parser. A
fault of digest's own keeps its traceback: that one is a bug to report."""

from __future__ import annotations

import copy
import logging

from uvicorn.config import LOGGING_CONFIG

_CLIENT_FAULTS = ("Invalid HTTP request received.",)  # uvicorn's words for a request it could not parse


class OneLine(logging.Filter):
    """A client's malformed request: the exception's text appended to the line, its traceback dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.getMessage() in _CLIENT_FAULTS:
            error = record.exc_info[1]
            detail = f"{type(error).__name__}: {error}" if error is not None else ""
            record.msg, record.args = f"{record.getMessage()} ({detail})" if detail else record.getMessage(), ()
            record.exc_info, record.exc_text = None, None
        return True


LOG_CONFIG = copy.deepcopy(LOGGING_CONFIG)
LOG_CONFIG["filters"] = {"one_line": {"()": OneLine}}
LOG_CONFIG["handlers"]["default"]["filters"] = ["one_line"]
