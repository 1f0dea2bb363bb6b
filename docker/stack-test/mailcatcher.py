"""Stand-in for Mailpit: an SMTP server on :1025 that keeps every message, and the slice of Mailpit's HTTP API
that the stack test reads on :8025 (GET /api/v1/messages, GET /api/v1/message/<ID>, /livez)."""

import email
import email.policy
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

MESSAGES: list[dict] = []
LOCK = threading.Lock()


class Keep:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain", "html"))
        with LOCK:
            MESSAGES.append({
                "ID": uuid.uuid4().hex, "From": {"Address": envelope.mail_from},
                "To": [{"Address": a} for a in envelope.rcpt_tos], "Subject": str(msg.get("Subject", "")),
                "Text": body.get_content() if body is not None else "",
            })
        return "250 Message accepted for delivery"


class Api(BaseHTTPRequestHandler):
    def _json(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with LOCK:
            messages = list(MESSAGES)
        if self.path.startswith("/livez"):
            return self._json(200, {"ok": True})
        if self.path.startswith("/api/v1/messages"):
            summary = [{k: m[k] for k in ("ID", "From", "To", "Subject")} for m in reversed(messages)]
            return self._json(200, {"total": len(messages), "messages_count": len(messages), "messages": summary})
        if self.path.startswith("/api/v1/message/"):
            wanted = self.path.rsplit("/", 1)[-1]
            for m in messages:
                if m["ID"] == wanted:
                    return self._json(200, m)
        return self._json(404, {"error": "not found"})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    Controller(Keep(), hostname="0.0.0.0", port=1025).start()
    print("mailcatcher: SMTP :1025, API :8025", flush=True)
    ThreadingHTTPServer(("0.0.0.0", 8025), Api).serve_forever()
