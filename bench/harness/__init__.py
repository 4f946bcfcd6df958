"""The benchmark harness behind bench/run.py, one concept per module.

- config: paths, the shared secrets, CPU assignment, timeouts;
- console: the runner's progress lines;
- errors: the runner's exceptions;
- processes: child processes (pinning, fd limit, stopping), free ports, readiness checks;
- toolchain: npm packages, the Go load generator build, the tools needed on the PATH;
- targets: the targets table, the private Redis, starting a target;
- scenarios: the scenarios table, running the load generator, one run of a target;
- plan: a bench run's plan, its execution and the results document;
- environment: the machine and every version, for the results;
- summary: medians, sums and flags over runs, problems and notes;
- metrics: the figures shown, their lookup and formatting;
- report: docs/benchmarks.md;
- charts: the PNG charts of docs/benchmarks.md.
"""
