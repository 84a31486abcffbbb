# shellcheck shell=sh
# Source me:  . services/env.sh
# Exports where the local services live and how to reach them. Every variable keeps a value
# that is already set; nothing is printed (the secret in particular).

export S3TS_HOME="${S3TS_HOME:-$HOME/.cache/s3transfer-stream}"
export S3TS_STATE="${S3TS_STATE:-$S3TS_HOME/run}"

# Apache Kafka (KRaft, single combined broker+controller node on 127.0.0.1)
export S3TS_KAFKA_VERSION="${S3TS_KAFKA_VERSION:-4.4.0}"
export S3TS_KAFKA_PORT="${S3TS_KAFKA_PORT:-39092}"
export S3TS_KAFKA_CONTROLLER_PORT="${S3TS_KAFKA_CONTROLLER_PORT:-39093}"

# S3 server (SeaweedFS `weed mini` on 127.0.0.1); its other ports are set in services/seaweedfs.sh
export S3TS_S3_PORT="${S3TS_S3_PORT:-38333}"
export S3TS_S3_ACCESS_KEY_ID="${S3TS_S3_ACCESS_KEY_ID:-s3ts-local}"
export S3TS_S3_SECRET_ACCESS_KEY="${S3TS_S3_SECRET_ACCESS_KEY:-s3ts-local-secret}"
export S3TS_S3_REGION="${S3TS_S3_REGION:-us-east-1}"

# OpenMSIStream-style names used by config files ($VAR substitution)
export LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS="${LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS:-127.0.0.1:$S3TS_KAFKA_PORT}"
export ACCESS_KEY_ID="${ACCESS_KEY_ID:-$S3TS_S3_ACCESS_KEY_ID}"
export SECRET_KEY_ID="${SECRET_KEY_ID:-$S3TS_S3_SECRET_ACCESS_KEY}"
export ENDPOINT_URL="${ENDPOINT_URL:-http://127.0.0.1:$S3TS_S3_PORT}"
export REGION="${REGION:-$S3TS_S3_REGION}"
