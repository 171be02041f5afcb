#!/bin/sh
# docker-compose's certificates for the backing services (README, "TLS to the backing
# services"): a CA of this machine's own, and a certificate it signs for each server under
# the host name the applications connect to (verify-full and rediss:// check the name).
# Run by the `tls-certs` service into one volume per reader: the applications get the CA
# only, each server its own key. Idempotent: an existing CA is kept, so clients keep trusting.
# Production: use your own CA (or your provider's) and give each file the same place.
set -eu
OUT=${TLS_OUT:-/tls}
DAYS=${TLS_DAYS:-825}
# The servers run as uid/gid 999 in their images; PostgreSQL accepts a key owned by root only
# if no one but root and the key's group can read it (0640).
SERVER_GID=${TLS_SERVER_GID:-999}

mkdir -p "$OUT/ca" "$OUT/ca-key"
if [ ! -f "$OUT/ca/ca.pem" ]; then
  openssl req -x509 -new -nodes -newkey rsa:3072 -days "$DAYS" -subj "/CN=orders backing services CA" \
    -keyout "$OUT/ca-key/ca.key" -out "$OUT/ca/ca.pem"
  chmod 600 "$OUT/ca-key/ca.key"
fi

for server in postgres redis rabbitmq; do
  dir="$OUT/$server"
  mkdir -p "$dir"
  [ -f "$dir/server.pem" ] && continue
  openssl req -new -nodes -newkey rsa:3072 -subj "/CN=$server" \
    -keyout "$dir/server.key" -out "$dir/server.csr"
  printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' "$server" > "$dir/ext.cnf"
  openssl x509 -req -in "$dir/server.csr" -CA "$OUT/ca/ca.pem" -CAkey "$OUT/ca-key/ca.key" \
    -CAserial "$OUT/ca-key/ca.srl" -CAcreateserial -days "$DAYS" -extfile "$dir/ext.cnf" -out "$dir/server.pem"
  rm "$dir/server.csr" "$dir/ext.cnf"
  cp "$OUT/ca/ca.pem" "$dir/ca.pem"
  chown "0:$SERVER_GID" "$dir/server.key" && chmod 640 "$dir/server.key"
done
chmod 644 "$OUT/ca/ca.pem" "$OUT"/*/server.pem
