"""The recommender model, its metrics and the prequential evaluation harness (no Spark, no Airflow, no jobs).
"""
