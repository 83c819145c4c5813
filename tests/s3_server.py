"""An S3-compatible server for the object-storage tests: moto's, on 127.0.0.1, in a process of
its own (moto keeps buckets in process memory, so two servers need two processes).

`python tests/s3_server.py PORT` serves until killed. One fix to moto 5.2.1's replies: its
CompleteMultipartUpload answer is rooted at `CompleteMultipartUploadResponse`, where S3 (and
pyarrow, which checks the root to catch errors S3 embeds in a 200 reply) has
`CompleteMultipartUploadResult`; unfixed, every pyarrow write fails against moto.
"""

from __future__ import annotations

import sys

WRONG, RIGHT = b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult"


def fixed_root(app):
    """WSGI middleware renaming the root of CompleteMultipartUpload replies."""

    def wrapped(environ, start_response):
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["reply"] = (status, headers, exc_info)
            return lambda data: None

        body = b"".join(app(environ, capture))
        status, headers, exc_info = captured["reply"]
        if WRONG in body:
            body = body.replace(WRONG, RIGHT)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers, exc_info)
        return [body]

    return wrapped


def serve(port: int) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = fixed_root(DomainDispatcherApplication(create_backend_app))
    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
