#!/usr/bin/env python3
"""The Secret Notes upstream: the page, a demo sign-in, and the notes API.

Behind Envoy and authgate (envoy.yaml): authgate verifies the access token on
/api/ and sets the Hasura session headers; the API trusts them, as Hasura
would. Reading needs a session (x-hasura-user-id); adding or deleting also
needs x-hasura-auth-elevated equal to the user id (authgate alone sets it, after
a security-key step-up), the check a Hasura permission
`user_id: {_eq: X-Hasura-Auth-Elevated}` makes.

The sign-in (POST /demo/sign-in) issues HS256 access tokens for any name: it
stands in for an identity provider (nhost's auth, Auth0, ...) and exists only
in this demo. Python's standard library only; notes live in memory.

    python3 notes.py [--host 127.0.0.1] [--port 8090]   (port 0: any free port)
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECRET = os.environ.get("SECRET_NOTES_JWT_SECRET", "secret-notes-demo-secret-change-me-0123456789")
TOKEN_TTL = int(os.environ.get("SECRET_NOTES_TOKEN_TTL", "900"))
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
}
MAX_BODY = 16 * 1024

notes = {}  # user id -> {note id: note}
lock = threading.Lock()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token(user: str) -> str:
    """An HS256 JWT in Hasura's claims format, as an identity provider issues."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {
        "sub": user,
        "iat": now,
        "exp": now + TOKEN_TTL,
        "jti": secrets.token_hex(8),
        "https://hasura.io/jwt/claims": {
            "x-hasura-user-id": user,
            "x-hasura-default-role": "user",
            "x-hasura-allowed-roles": ["user"],
        },
    }
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


class Handler(BaseHTTPRequestHandler):
    server_version = "secret-notes"

    def log_message(self, fmt, *args):  # the path only: never headers or tokens
        sys.stderr.write("notes: %s %s\n" % (self.command, self.path.split("?")[0]))

    def answer(self, status, body=None, content_type="application/json"):
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if content_type.startswith("text/html"):
            self.send_header(
                "Content-Security-Policy",
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'",
            )
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        if not 0 <= length <= MAX_BODY:
            return None
        try:
            return json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return None

    def session(self, elevated):
        """The user id authgate vouched for, or None after answering."""
        user = self.headers.get("x-hasura-user-id")
        if not user:
            self.answer(401, {"error": "no session (reach the API through Envoy)"})
            return None
        if elevated and self.headers.get("x-hasura-auth-elevated") != user:
            self.answer(403, {"error": "elevated access required"})
            return None
        return user

    def do_GET(self):
        path = self.path.split("?")[0]
        if path in STATIC:
            name, content_type = STATIC[path]
            return self.answer(200, (HERE / name).read_bytes(), content_type)
        if path == "/api/notes":
            user = self.session(elevated=False)
            if user is None:
                return
            with lock:
                mine = sorted(notes.get(user, {}).values(), key=lambda n: n["createdAt"])
            return self.answer(200, {"notes": mine})
        self.answer(404, {"error": "not found"})

    def do_POST(self):
        path = self.path.split("?")[0]
        if path == "/demo/sign-in":
            body = self.body()
            user = body.get("user") if isinstance(body, dict) else None
            if not isinstance(user, str) or not 0 < len(user) <= 64:
                return self.answer(400, {"error": "a user name of 1 to 64 characters"})
            return self.answer(200, {"accessToken": access_token(user), "expiresIn": TOKEN_TTL})
        if path == "/api/notes":
            user = self.session(elevated=True)
            if user is None:
                return
            body = self.body()
            text = body.get("text") if isinstance(body, dict) else None
            if not isinstance(text, str) or not 0 < len(text) <= 1000:
                return self.answer(400, {"error": "a note of 1 to 1000 characters"})
            note = {"id": secrets.token_hex(6), "text": text, "createdAt": time.time()}
            with lock:
                notes.setdefault(user, {})[note["id"]] = note
            return self.answer(201, note)
        self.answer(404, {"error": "not found"})

    def do_DELETE(self):
        path = self.path.split("?")[0]
        if path.startswith("/api/notes/"):
            user = self.session(elevated=True)
            if user is None:
                return
            with lock:
                gone = notes.get(user, {}).pop(path[len("/api/notes/"):], None)
            return self.answer(204) if gone else self.answer(404, {"error": "no such note"})
        self.answer(404, {"error": "not found"})


def main():
    parser = argparse.ArgumentParser(description="The Secret Notes upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print("notes: listening on http://%s:%d" % server.server_address[:2], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
