"""Jupyter messages to the lines of the `/execute` stream (spec §4.2)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

# MIME type → field of a `result` line; every other type goes to `extra`.
MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}


def timestamp(msg: dict[str, Any]) -> str:
    """The message header's date, as the Jupyter server would send it."""
    date = msg["header"].get("date")
    if isinstance(date, datetime):
        return date.isoformat().replace("+00:00", "Z")
    return str(date or datetime.now().astimezone().isoformat())


def result(data: dict[str, Any], is_main_result: bool) -> dict[str, Any]:
    line: dict[str, Any] = {"type": "result", "is_main_result": is_main_result}
    extra = {}
    for mime, value in data.items():
        field = MIME_FIELDS.get(mime)
        if value is None:
            continue
        if field is None:
            extra[mime] = value
            continue
        if field == "text" and len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        line[field] = value
    if extra:
        line["extra"] = extra
    return line


def error(name: str, value: str, traceback: str) -> dict[str, Any]:
    return {"type": "error", "name": name, "value": value, "traceback": traceback}


def convert(msg: dict[str, Any]) -> dict[str, Any] | None:
    """The stream line for one iopub message of an execution, if it makes one."""
    kind, content = msg["header"]["msg_type"], msg["content"]
    if kind == "stream":
        name = "stderr" if content.get("name") == "stderr" else "stdout"
        return {"type": name, "text": content.get("text", ""), "timestamp": timestamp(msg)}
    if kind == "execute_result":
        return result(content.get("data", {}), True)
    if kind == "display_data":
        return result(content.get("data", {}), False)
    if kind == "error":
        traceback = "".join(content.get("traceback") or ())  # as E2B joins it
        return error(content.get("ename", ""), content.get("evalue", ""), traceback)
    if kind == "execute_input":
        return {"type": "number_of_executions", "execution_count": content["execution_count"]}
    return None
