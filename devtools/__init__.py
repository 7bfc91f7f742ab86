"""Development tools, apart from the pipeline: the demo (`make demo`) and the synthetic stream generator.
"""
