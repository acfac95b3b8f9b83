# The Ariel app image: the control plane, one image with several entrypoints (docker/compose.yaml):
#   ariel serve                    the HTTP app (MCP at /mcp, the Prefect gateway), default
#   ariel pool-host --server URL   the workers of every org's pools (needs the Docker socket)
#   prefect server start           the Prefect server of the release Ariel pins
# Flow runs do not run here: they run in the lean runtime image (docker/Dockerfile).
#
# Build context (assembled by `ariel build-image compose`): this file as Dockerfile, ariel/ (Ariel's own
# wheel) and wheels/ (every wheel it needs, resolved for this base's Python). No network is reached.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS install
COPY wheels/ /tmp/wheels/
# The dependencies in a layer of their own: a code change reinstalls only Ariel's wheel.
RUN python3 -m venv /opt/ariel/venv \
    && /opt/ariel/venv/bin/pip install --no-cache-dir --no-index --no-deps /tmp/wheels/*.whl \
    && rm -rf /opt/ariel/venv/lib/python3*/site-packages/litellm/proxy/_experimental/out
COPY ariel/ /tmp/ariel/
RUN /opt/ariel/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels /tmp/ariel/ariel-*.whl

FROM ${BASE_IMAGE}
RUN command -v tini >/dev/null 2>&1 \
    || (apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*)
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin ariel \
    && mkdir -p /var/lib/ariel && chown ariel:ariel /var/lib/ariel
COPY --from=install /opt/ariel/ /opt/ariel/

ENV PATH=/opt/ariel/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    # litellm otherwise fetches a price map from the internet at import.
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    # Prefect's client otherwise sends usage analytics to a third party.
    DO_NOT_TRACK=1 \
    # Keys Ariel keeps in files when they are not given (a compose install gives them) and its state.
    ARIEL_HOME=/var/lib/ariel \
    # The runtime image is built from a checkout (`ariel build-image`), not from inside this image.
    ARIEL_BUILD_IMAGE=false \
    HOME=/home/ariel

USER ariel
WORKDIR /home/ariel
ENTRYPOINT ["tini", "--"]
CMD ["ariel", "serve"]
