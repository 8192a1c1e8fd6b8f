#!/usr/bin/env python3
"""An SMTP server for Capstan's alert tests: aiosmtpd (Debian python3-aiosmtpd) on 127.0.0.1
with STARTTLS required and AUTH (PLAIN, LOGIN) required after it.

    smtp_server.py PORT CERT KEY USER PASSWORD MAILDIR

Each message accepted is written to MAILDIR as N.eml (envelope sender and recipients in the
first lines as X-Envelope-From / X-Envelope-To). Only USER/PASSWORD authenticate. Serves until
its standard input closes."""
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, user, password, maildir = sys.argv[1:7]
os.makedirs(maildir, exist_ok=True)


class Handler:
    count = 0

    async def handle_DATA(self, server, session, envelope):
        Handler.count += 1
        path = os.path.join(maildir, f"{Handler.count:04d}.eml")
        header = f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        with open(path + ".tmp", "wb") as out:
            out.write(header.encode() + envelope.original_content)
        os.rename(path + ".tmp", path)
        return "250 Message accepted"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user and auth_data.password.decode() == password
    # handled=False: aiosmtpd answers the failure itself (535).
    return AuthResult(success=ok, handled=False)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(Handler(), hostname="127.0.0.1", port=int(port), tls_context=context, require_starttls=True,
                        auth_require_tls=True, authenticator=authenticate, server_hostname="localhost")
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
