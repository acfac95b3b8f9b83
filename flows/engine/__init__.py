"""Ariel's run engine: a flow run executed against Prefect's API with httpx, without importing Prefect.

A run container does one thing: take its flow run from Pending to its end, with a task run per step, its log
and its artifacts in Prefect. Prefect's own engine does that too, but importing it costs a container more CPU than
a reply-only agent's whole run (0.65 CPU-s for `import prefect`); this one imports httpx and pydantic (~0.1).
The Prefect UI, Ariel's gateway and its recovery see the same run, states, task runs, logs and heartbeats.

    python -m flows.engine        # the run PREFECT__FLOW_RUN_ID names, as `python -m prefect.engine`

`flows.engine.lifecycle` takes the run; `flows.engine.steps` makes each step a task run; `flows.engine.logs` and
`flows.engine.events` carry its log and its events; `flows.engine.api` is the HTTP client.
"""
