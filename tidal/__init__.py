"""tidal's plumbing: typed config, storage layout and atomic writes, the registry, manifests, the pipeline
declarations and the Airflow task context. It imports nothing from jobs/, models/ or dags/.
"""
