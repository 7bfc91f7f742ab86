"""Serving: the recommendations API that answers from the production model and the online feature store, and
picks up every promotion or rollback without a restart (app.py, model_slot.py, online.py, recommend.py)."""
