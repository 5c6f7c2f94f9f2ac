"""The web dashboard: the fleet, its jobs and live logs in a browser, served by the coordinator at ``/``.

The page is plain HTML, CSS and JavaScript modules shipped as package data (``static/``), so installing the
coordinator needs no Node toolchain and no build step. It speaks the public API like any other client; what
it adds on the server side is small: the static files with strict security headers (:mod:`.assets`), and a
browser sign-in that swaps an API key or token for an HttpOnly session cookie (:mod:`.session`).
"""
