"""``segany annotate``: the data engine's assisted-manual and semi-automatic stages as a web server.

A FastAPI application over SQLAlchemy (SQLite beside the images by default, PostgreSQL for a team,
Alembic migrations): projects of images, objects stored as COCO RLE with the prompts, model, user and
time that made them, review states, a background encoder that caches every image's embedding, the
decoder as ONNX for the browser, server-side prediction, pre-fill from automatic masks, statistics
and exports. Needs the ``annotate`` extra (``pip install 'segany[annotate]'``).

Modules: ``db`` (tables, engines, migrations), ``store`` (database operations), ``auth``,
``images`` (files and uploads), ``modelsvc`` (model, embeddings, decoder, predict), ``worker``,
``server`` (settings, safety middleware, ``serve``), ``app`` (routes), ``export``, ``prefill``, ``stats``.
"""
