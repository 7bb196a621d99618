"""``md4 serve``: a local web page for trying trained runs, the reverse process streaming into it.

- :mod:`~md4.serve.hosting`: the optional web stack (``md4[serve]``: Starlette and uvicorn), the address checks
  and the listening socket;
- :mod:`~md4.serve.jobs`: the limits of a request, the job slots, and a job: a worker thread whose events stream
  to the page and which stops when the page goes away;
- :mod:`~md4.serve.fields`: a request's JSON fields, checked one sentence each;
- :mod:`~md4.serve.catalog`: the runs offered (fixed at start) and their sampling controls;
- :mod:`~md4.serve.text` and :mod:`~md4.serve.images`: the text and image jobs and their events;
- :mod:`~md4.serve.app`: the Starlette application (routes, the event stream); ``static/``: the page (plain
  HTML, CSS and JavaScript).

Only :mod:`~md4.serve.app` and :func:`~md4.serve.hosting.server_for` import the web stack, so ``import md4`` and
``md4 --help`` work without it.
"""
