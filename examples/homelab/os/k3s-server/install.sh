# Stands in for `curl -sfL https://get.k3s.io | sh -s - server`: the real
# installer reads /etc/rancher/k3s/config.yaml, which terrace has put there.
set -e
mkdir -p "$TERRACE_ROOT/usr/local/bin" "$TERRACE_ROOT/var/lib/rancher/k3s/server"
token="$TERRACE_ROOT/var/lib/rancher/k3s/server/token"
if [ ! -s "$token" ]; then
  (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$token")
fi
grep -q "^node-name: $HOST_NAME\$" "$TERRACE_ROOT/etc/rancher/k3s/config.yaml"
echo "k3s server $CLUSTER" > "$TERRACE_ROOT/usr/local/bin/k3s.installed"
echo "k3s server installed on $HOST_NAME"
# The join token is printed only on this line, which terrace never shows.
printf '::outputs::{"token":"%s","server":"https://%s:6443"}\n' "$(cat "$token")" "$HOST_IP"
