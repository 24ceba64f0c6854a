# terrace's stdout callback for ansible-playbook: one JSON object per line
# for every task result (task, host, changed, failed, unreachable, skipped,
# diff, msg), then one line of per-host stats. Results of `no_log` tasks
# carry neither diff nor msg.
import json

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "terrace_events"

    def _emit(self, event):
        self._display.display(json.dumps(event, default=str, sort_keys=True))

    def _result(self, result, **state):
        r = result._result
        hidden = r.get("_ansible_no_log", False)
        self._emit(
            {
                "event": "result",
                "task": result._task.get_name(),
                "host": result._host.get_name(),
                "changed": bool(r.get("changed", False)),
                "failed": state.get("failed", False),
                "unreachable": state.get("unreachable", False),
                "skipped": state.get("skipped", False),
                "diff": None if hidden else r.get("diff"),
                "msg": "(hidden: no_log)" if hidden else r.get("msg"),
            }
        )

    def v2_runner_on_ok(self, result):
        self._result(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, failed=not ignore_errors)

    def v2_runner_on_unreachable(self, result):
        self._result(result, unreachable=True)

    def v2_runner_on_skipped(self, result):
        self._result(result, skipped=True)

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        self._emit({"event": "stats", "hosts": {h: stats.summarize(h) for h in hosts}})
