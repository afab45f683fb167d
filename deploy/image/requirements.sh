#!/bin/sh
# The Python packages of the Praxis image, as requirements.txt (pinned, hashed) on stdout: the
# six services and the libraries they use (praxis-contracts, -runtime, -sdk, -plr) at the
# versions of uv.lock, built from this checkout (not editable). Never the dev group (pytest,
# ruff, ...) nor praxis-devstack (embedded nats-server and PostgreSQL: `make run` and the tests
# only), which no service depends on.
#
# The one definition of the runtime set: the Dockerfile installs what this prints, and
# tests/deploy/test_image.py installs the same into a fresh venv and starts every service.
#
#   UV=.tools/bin/uv deploy/image/requirements.sh > requirements.txt
set -eu
cd "$(dirname "$0")/../.."
exec "${UV:-uv}" export --frozen --no-dev --no-editable --no-header --quiet \
    --package praxis-scheduler \
    --package praxis-code-manager \
    --package praxis-asset-manager \
    --package praxis-audit \
    --package praxis-gateway \
    --package praxis-orchestrator
