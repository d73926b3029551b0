"""``mongotune dashboard``: a live, read-only web view of the studies in one MongoDB.

``net`` checks and binds the address (no heavy imports), ``app`` is the
Starlette app served by uvicorn, ``state`` keeps per-study rows and charts
current from reads of the changed trials only, ``readonly`` is the only way
to the database it has.
"""
