# Exit 0: installed for this cluster; exit 2: not (what is printed is the diff).
marker="$TERRACE_ROOT/usr/local/bin/k3s.installed"
token="$TERRACE_ROOT/var/lib/rancher/k3s/server/token"
if [ -s "$token" ] && [ "$(cat "$marker" 2>/dev/null)" = "k3s server $CLUSTER" ]; then
  exit 0
fi
echo "install k3s server for $CLUSTER on $HOST_NAME ($HOST_IP)"
exit 2
