"""hubbub's monitoring as code: Prometheus alert rules (`alerts`, standard library only) and Grafana
dashboards (`dashboards`, generated with grafana-foundation-sdk from the `dev` extra).

Neither is imported by the service: `python -m hubbub.monitoring` writes the checked-in files
(`dashboards/*.json`, `rules/hubbub-alerts.yaml`) that a deployment loads, and an operator may
render the rules with its own thresholds from `hubbub.monitoring.alerts`.
"""
