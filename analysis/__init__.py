"""Ablation tables, figures and reports from MLflow: `python -m analysis report` (see __main__.py)."""
