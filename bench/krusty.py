#!/usr/bin/env python3
"""terrace's kustomize engine against kustomize's own krusty test suite.

kustomize's `api/krusty/*_test.go` tests write files through a test harness
(`th.WriteK`, `th.WriteC`, `th.WriteF`, `th.WriteLegacyConfigs`), build with
`th.Run` and compare with an expected YAML string
(`th.AssertActualEqualsExpected`), or expect the build to fail
(`th.RunWithErr`). This script reads those tests at run time from a kustomize
source (never copying them into this repository), replays each one into a
temporary directory (removed at the end), and:

1. runs `kubectl kustomize DIR` (kustomize embedded in kubectl) on every case
   and keeps the cases where kubectl prints what the test expects (see the
   rule below), or fails when the test expects an error. The harness builds
   with `Reorder: none` (input order) while kubectl always sorts in
   kustomize's legacy order, so a case also counts as agreeing when kubectl
   prints the same documents in another order;
2. runs `terrace kustomize build DIR` on those and counts a pass when its
   output matches kubectl's (which is the test's expectation, possibly
   reordered), or it fails as well, for error cases.

Outputs are compared as data, the rule of terrace's own conformance corpus:
both are read as YAML streams with PyYAML (YAML 1.1, as kyaml reads them),
null documents are dropped, and they match when they hold the same
documents in the same order with equal values (map key order and formatting
may differ; scalars must also have the same type, so `1`, `1.0`, `true` and
`"1"` all differ). Output that does not parse is a mismatch. Without PyYAML
the comparison falls back to the text, byte for byte (said on stderr and in
the summary). How many passes are also byte-identical to kubectl's text is
reported as well.

It prints how many test files and functions were read, how many cases were
extracted, why the others were not (grouped), how many cases kubectl agrees
with, terrace's passes among them, the pass rate and the byte-identical
passes, then every failing case as `file:TestName  reason`: where the data
first differs (`doc 2: .spec.replicas: 3, want 1`, documents counted from 0,
or `3 documents, want 4; ...`), or the error's first line.

Extraction is a small interpreter of the harness calls, kept strict: one case
per `th.Run` + assertion (or `th.RunWithErr`) in a `func TestXxx`, with the
files written up to that point (a test with several builds gives TestXxx,
TestXxx#2, ...). String arguments may be raw or interpreted literals, `+`
concatenations, constants or local variables defined by such expressions,
and `os.ReadFile("./testdata/...")` (read from the source too); package
functions called with the harness (and strings, or a `func(t)` literal they
call) are inlined. Anything else that touches the harness (table-driven tests, plugins,
helm, other options, other harness methods, unresolvable strings) marks the
whole test "not extracted", with the reason. Paths such as "/app/base" are
mapped under the case directory. `opts.LoadRestrictions =
types.LoadRestrictionsNone` becomes `--load-restrictor LoadRestrictionsNone`
for both tools; `opts.Reorder = ...` is ignored (both tools sort as in 1.).

Usage: bench/krusty.py [--src PATH] [--terrace PATH] [--filter REGEX]
                       [--keep DIR] [--show NAME] [--json]

  --src      a bare git dir or a checkout of kubernetes-sigs/kustomize (env
             KUSTOMIZE_SRC; default the local mirror). Without one the run is
             skipped, saying so on stderr, with exit code 0.
  --terrace  the binary (env TERRACE_BIN; default target/release/terrace).
  --filter   only tests whose name matches REGEX (all counts are over those).
  --keep     write the case directories to DIR and leave them there.
  --show     print the unified diff between kubectl's and terrace's output
             text for one case (TestName, TestName#2 or file:TestName), and
             the verdict.
  --json     one JSON document with the same data instead of the summary.

Exit code 0 whenever the run completes (it is a measurement), 2 on usage
errors (such as a missing terrace binary).
"""
import argparse, collections, concurrent.futures, difflib, json, os, posixpath, re, shutil, subprocess, sys, tempfile, types

try:
    import yaml

    class YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        """PyYAML's safe loader, reading YAML 1.1's `=` (the "value" type) as the string kyaml reads."""
    YamlLoader.add_constructor("tag:yaml.org,2002:value", YamlLoader.construct_yaml_str)
except ImportError:
    yaml = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIRROR = "/work/.mirror/kubernetes-sigs+kustomize/repo"
TIMEOUT = 30
KRUSTY, LEGACY = "api/krusty", "api/internal/konfig/builtinpluginconsts"
HEADERS = {"WriteK": "\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n",
           "WriteC": "\napiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"}
ASSERTS = {"AssertActualEqualsExpected", "AssertActualEqualsExpectedNoIdAnnotations"}
NO_FLAGS_OPTIONS = {"MakeDefaultOptions", "MakeOptionsPluginsDisabled"}
LOAD_NONE = ["--load-restrictor", "LoadRestrictionsNone"]

# ---------------------------------------------------------------- Go subset
TOKEN = re.compile(r"""(?P<nl>\n)|(?P<sp>[ \t\r]+|//[^\n]*|/\*.*?\*/)|(?P<lit>`[^`]*`|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
    |(?P<id>[A-Za-z_]\w*)|(?P<num>\.?\d[\w.]*)|(?P<op>\+\+|--|:=|\.\.\.|&&|\|\||<-|<<=?|>>=?|&\^=?|[-+*/%&|^<>=!]=?|[(){}\[\],;.:~])""",
                   re.S | re.X)
IDENT = re.compile(r"[A-Za-z_]\w*")
OPEN, CLOSE = {"(", "[", "{"}, {")", "]", "}"}
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


class NotExtracted(Exception):
    """A test the interpreter does not replay; the message is "category: detail"."""


def tokenize(src):
    """Go tokens as strings, with the semicolons Go inserts at line ends."""
    toks, pos = [], 0
    while pos < len(src):
        m = TOKEN.match(src, pos)
        if not m:
            raise NotExtracted(f"tokenizer: unexpected {src[pos]!r}")
        pos, kind, text = m.end(), m.lastgroup, m.group()
        if kind == "sp" and "\n" not in text:
            continue
        if kind in ("nl", "sp"):
            if toks and (toks[-1][0] in "`\"'_" or toks[-1][0].isalnum() or toks[-1] in (")", "]", "}", "++", "--")):
                toks.append(";")
            continue
        toks.append(text)
    return toks


def close_of(toks, i):
    """Index of the bracket closing the one at toks[i]."""
    depth = 0
    for j in range(i, len(toks)):
        depth += (toks[j] in OPEN) - (toks[j] in CLOSE)
        if depth == 0:
            return j
    raise NotExtracted("parser: unbalanced brackets")


def split_top(toks, sep):
    """Split toks at sep tokens outside brackets; empty parts are dropped."""
    parts, cur, depth = [], [], 0
    for t in toks:
        depth += (t in OPEN) - (t in CLOSE)
        if t == sep and depth == 0:
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    return [p for p in parts + [cur] if p]


def decode(lit):
    """The value of a Go string literal."""
    if lit[0] == "`":
        return lit[1:-1].replace("\r", "")

    def esc(m):
        s = m.group(1)
        if s[0] in "xuU":
            return chr(int(s[1:], 16))
        return chr(int(s, 8)) if s[0].isdigit() else ESCAPES.get(s, s)
    return re.sub(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)", esc, lit[1:-1])


def parse_go(src, funcs, consts):
    """Collect a file's top-level functions (name -> (param names, body)) and const/var expressions."""
    toks, i = tokenize(src), 0
    while i < len(toks):
        t = toks[i]
        if t == "func":
            j = i + 1
            if toks[j] == "(":  # a method: skip its receiver
                j = close_of(toks, j) + 1
            name, params_end = toks[j], close_of(toks, j + 1)
            params = [p[0] for p in split_top(toks[j + 2:params_end], ",")]
            k = params_end + 1
            while toks[k] != "{":
                k = close_of(toks, k) + 1 if toks[k] in OPEN else k + 1
            end = close_of(toks, k)
            if toks[i + 1] != "(":
                funcs[name] = (params, toks[k + 1:end])
            i = end + 1
        elif t in ("const", "var") and toks[i + 1] == "(":
            end = close_of(toks, i + 1)
            for spec in split_top(toks[i + 2:end], ";"):
                define(spec, consts)
            i = end + 1
        else:
            end = i
            while end < len(toks) and toks[end] != ";":
                end = close_of(toks, end) + 1 if toks[end] in OPEN else end + 1
            if t in ("const", "var"):
                define(toks[i + 1:end], consts)
            i = end + 1


def define(spec, scope):
    """Record `a, b [type] = x, y` (or `a := x`) into scope as unevaluated token lists."""
    eq = next((i for i, t in enumerate(spec) if t in ("=", ":=")), None)
    if eq is None:
        return
    names, values = split_top(spec[:eq], ","), split_top(spec[eq + 1:], ",")
    for n, v in zip(names, values if len(values) == len(names) else [None] * len(names)):
        scope[n[0]] = v


def short(toks, n=6):
    return " ".join(toks[:n]) + (" ..." if len(toks) > n else "")


# ------------------------------------------------------------ interpreter
class Extractor:
    """Replays the harness calls of test functions into file sets and expectations."""

    def __init__(self, funcs, consts, legacy=None, read=None):
        self.funcs, self.consts, self.legacy, self.read, self.resolving = funcs, consts, legacy, read, set()

    def string(self, toks, env):
        out = []
        for term in split_top(toks, "+"):
            if len(term) == 1 and term[0][0] in "`\"":
                out.append(decode(term[0]))
            elif len(term) == 1 and IDENT.fullmatch(term[0]):
                out.append(self.lookup(term[0], env))
            elif term[0] in ("(", "string") and term[-1] == ")" and close_of(term, term.index("(")) == len(term) - 1:
                out.append(self.string(term[term.index("(") + 1:-1], env))
            else:
                raise NotExtracted(f"unresolved string: {short(term, 4)}")
        return "".join(out)

    def lookup(self, name, env):
        if name in env:
            if not isinstance(env[name], str):
                raise NotExtracted(f"unresolved string: {name}")
            return env[name]
        if self.consts.get(name) is None or name in self.resolving:
            raise NotExtracted(f"unresolved string: {name}")
        self.resolving.add(name)
        try:
            return self.string(self.consts[name], {})
        finally:
            self.resolving.discard(name)

    def options(self, toks, env, ths, st):
        """The command-line flags for an options expression."""
        if toks[0] == "func":  # func() Options { o := ...; ...; return o }()
            k = toks.index("{")
            end = close_of(toks, k)
            body = split_top(toks[k + 1:end], ";")
            if toks[end + 1:] != ["(", ")"] or not body or body[-1][0] != "return":
                raise NotExtracted(f"options: {short(toks, 4)}")
            inner = dict(env)
            for s in body[:-1]:
                self.statement(s, inner, ths, st, 0)
            return self.options(body[-1][1:], inner, ths, st)
        toks = toks[1:] if toks[0] in ("*", "&") else toks
        if len(toks) == 1 and toks[0] in st.opts:
            return list(st.opts[toks[0]])
        if len(toks) == 5 and toks[1:] == [".", toks[2], "(", ")"] and (toks[0] in ths or toks[0] == "krusty"):
            if toks[2] in NO_FLAGS_OPTIONS:
                return []
            raise NotExtracted(f"{'plugins' if 'Plugins' in toks[2] else 'options'}: {toks[2]}")
        raise NotExtracted(f"options: {short(toks, 4)}")

    def extract(self, body):
        st = types.SimpleNamespace(files={}, opts={}, runs={}, cases=[], harness=False)  # what the test did so far
        self.block(body, {}, set(), st, 0)
        if not st.harness:
            raise NotExtracted("no kusttest harness")
        if not st.cases:
            raise NotExtracted("no build with an expectation")
        return st.cases

    def block(self, toks, env, ths, st, depth):
        if depth > 10:
            raise NotExtracted("unsupported statement: helpers nested too deeply")
        for s in split_top(toks, ";"):
            self.statement(s, env, ths, st, depth)

    def statement(self, s, env, ths, st, depth):
        """Replay one statement; statements that do not touch the harness are skipped."""
        touches = any(t in ths or t == "kusttest_test" for t in s)
        call = lambda at: split_top(s[at + 1:close_of(s, at)], ",")
        method = s[2] if len(s) > 3 and s[0] in ths and s[1] == "." and s[3] == "(" and close_of(s, 3) == len(s) - 1 else None
        if s[0] in ("for", "switch", "go") or s[:3] == ["t", ".", "Run"]:
            if touches:
                raise NotExtracted("table-driven or looped test")
        elif s[0] == "if" and touches:
            raise NotExtracted(f"harness used in an if: {short(s)}")
        elif s[0] == "t" and len(s) > 2 and s[2].startswith("Skip"):
            raise NotExtracted("skipped by the test")
        elif s[0] == "defer" and touches:
            if s[1] not in ths or s[2:] != [".", "Reset", "(", ")"]:
                raise NotExtracted(f"unsupported statement: {short(s)}")
        elif len(s) > 4 and s[1] in (":=", "=") and s[2:4] == ["kusttest_test", "."]:
            if s[4] in ("MakeHarness", "MakeEnhancedHarness") and s[5:] == ["(", "t", ")"]:
                ths.add(s[0])
                st.harness = True
            elif s[4] == "MakeEnhancedHarness":
                raise NotExtracted(f"plugins: {s[9] if len(s) > 9 else 'enhanced harness'}")
            else:
                raise NotExtracted(f"harness: {s[4]}")
        elif len(s) > 3 and s[0] in st.opts and s[1] == "." and s[3] == "=":
            value = " ".join(s[4:])
            if s[2] == "LoadRestrictions" and value in ("types . LoadRestrictionsNone", "types . LoadRestrictionsRootOnly"):
                st.opts[s[0]] = LOAD_NONE if value.endswith("None") else []
            elif s[2] != "Reorder" or not value.startswith("krusty . ReorderOption"):
                raise NotExtracted(f"options: {s[2]} = {short(s[4:], 3)}")
            # (Reorder is ignored: both tools sort in legacy order and outputs are compared as described above.)
        elif len(s) > 5 and s[1] in (":=", "=") and re.fullmatch(r"Make\w*Options\w*", s[4 if s[2] not in ("*", "&") else 5]):
            st.opts[s[0]] = self.options(s[2:], env, ths, st)
        elif method == "Reset":
            pass  # resets an enhanced harness's plugin environment: nothing to do on disk
        elif method in ("WriteK", "WriteC", "WriteF", "WriteLegacyConfigs"):
            self.write(method, call(3), env, st)
        elif method in ASSERTS:
            args = call(3)
            if len(args) == 2 and args[0][0] in ths:
                run = self.run(args[0], env, ths, st)
            elif len(args) == 2 and len(args[0]) == 1 and args[0][0] in st.runs:
                run = st.runs[args[0][0]]
            else:
                raise NotExtracted(f"unsupported assertion: {short(s)}")
            st.cases.append(dict(run, expected=self.string(args[1], env)))
        elif any(s[i] in ths and s[i + 1:i + 4] == [".", "RunWithErr", "("] for i in range(len(s) - 3)):
            at = next(i for i in range(len(s) - 3) if s[i] in ths and s[i + 2] == "RunWithErr")
            st.cases.append(dict(self.run(s[at:close_of(s, at + 3) + 1], env, ths, st), expected=None))
        elif len(s) > 4 and s[1] in (":=", "=") and s[2] in ths and s[3:5] == [".", "Run"]:
            st.runs[s[0]] = self.run(s[2:], env, ths, st)
        elif s[1:] == ["(", "t", ")"] and isinstance(env.get(s[0]), tuple):  # calling a function literal
            body, outer_env, outer_ths = env[s[0]]
            self.block(body, dict(outer_env), set(outer_ths), st, depth + 1)
        elif s[0] in self.funcs and s[1:2] == ["("] and close_of(s, 1) == len(s) - 1 and touches:
            self.helper(self.funcs[s[0]], call(1), env, ths, st, depth)
        elif touches:
            raise NotExtracted(f"unsupported harness use: {method or next((s[i + 2] for i in range(len(s) - 2) if s[i] in ths and s[i + 1] == '.'), s[0])}")
        elif s[0] in ("var", "const"):
            for spec in split_top(s[2:-1] if s[1] == "(" else s[1:], ";"):
                self.local(spec, env)
        elif len(s) == 10 and s[1:3] == [",", "_"] and s[4:8] == ["os", ".", "ReadFile", "("] and s[8][0] in "`\"":
            env[s[0]] = self.read_testdata(decode(s[8]))
        elif len(s) > 2 and s[1] in (":=", "="):
            self.local(s, env)
        elif ":=" in s or "=" in s:  # a, b := ...: forget what those names held
            for name in split_top(s[:s.index(":=" if ":=" in s else "=")], ","):
                env[name[0]] = None

    def helper(self, func, args, env, ths, st, depth):
        """Inline a package function called with the harness (and strings, t, function literals)."""
        params, body = func
        inner, inner_ths = {}, set()
        for p, a in zip(params, args):
            if a == ["t"]:
                continue
            if len(a) == 1 and a[0] in ths:
                inner_ths.add(p)
            elif a[0] == "func" and "{" in a:
                k = a.index("{")
                inner[p] = (a[k + 1:close_of(a, k)], env, ths)
            else:
                inner[p] = self.string(a, env)
        self.block(body, inner, inner_ths, st, depth + 1)

    def local(self, spec, env):
        scope = {}
        define(spec, scope)
        for name, value in scope.items():
            try:
                env[name] = None if value is None else self.string(value, env)
            except NotExtracted:
                env[name] = None

    def read_testdata(self, rel):
        try:
            return self.read(posixpath.normpath(f"{KRUSTY}/{rel}"))
        except (OSError, subprocess.CalledProcessError):
            return None

    def write(self, method, args, env, st):
        path = posixpath.normpath("/" + self.string(args[0], env))
        if method == "WriteLegacyConfigs":
            if self.legacy is None:
                raise NotExtracted("unsupported harness use: WriteLegacyConfigs (default field specs not found)")
            st.files[path] = self.legacy
        elif method == "WriteF":
            st.files[path] = self.string(args[1], env)
        else:
            st.files[posixpath.join(path, "kustomization.yaml")] = HEADERS[method] + self.string(args[1], env)

    def run(self, toks, env, ths, st):
        """A build `th.Run(path, opts)` / `th.RunWithErr(...)` over the files written so far."""
        if toks[2] not in ("Run", "RunWithErr") or close_of(toks, 3) != len(toks) - 1:
            raise NotExtracted(f"unsupported build: {short(toks)}")
        args = split_top(toks[4:-1], ",")
        path = posixpath.normpath("/" + self.string(args[0], env))
        return {"dir": path.lstrip("/"), "flags": self.options(args[1], env, ths, st), "files": dict(st.files)}


# ----------------------------------------------------------------- source
def open_source(path):
    """(read(rel) -> text, list(dir) -> paths) for a checkout or a bare git dir, or None."""
    if os.path.isdir(os.path.join(path, KRUSTY)):
        return (lambda rel: open(os.path.join(path, rel), encoding="utf-8").read(),
                lambda rel: sorted(f"{rel}/{n}" for n in os.listdir(os.path.join(path, rel))))
    if os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects")):
        git = lambda *a: subprocess.run(["git", "--git-dir", path, *a], capture_output=True, text=True, check=True).stdout
        return (lambda rel: git("show", f"HEAD:{rel}"), lambda rel: git("ls-tree", "--name-only", "HEAD", rel + "/").split())
    return None


def extract_all(read, ls, name_filter):
    """Read the tests; return (stats, cases, not-extracted list)."""
    legacy_consts, funcs, consts, tests, skipped = {}, {}, {}, [], []
    try:  # the text th.WriteLegacyConfigs writes: the default field specs, concatenated
        for rel in (p for p in ls(LEGACY) if p.endswith(".go")):
            parse_go(read(rel), {}, legacy_consts)
        names = re.findall(r'result\["\w+"\] = (\w+)', read(f"{LEGACY}/defaultconfig.go"))
        legacy_text = "".join(Extractor({}, legacy_consts).lookup(n, {}) for n in names) or None
    except (OSError, subprocess.CalledProcessError, NotExtracted, IndexError):
        legacy_text = None
    files = [p for p in ls(KRUSTY) if p.endswith("_test.go")]
    for rel in files:
        file_funcs = {}
        try:
            parse_go(read(rel), file_funcs, consts)
        except (NotExtracted, IndexError) as e:
            skipped.append({"case": os.path.basename(rel), "reason": f"parser: {e or 'unexpected form'} (whole file)"})
        funcs.update(file_funcs)
        tests += [(os.path.basename(rel), n, body) for n, (params, body) in file_funcs.items()
                  if re.fullmatch(r"Test\w*", n) and params == ["t"] and re.search(name_filter, n)]
    ex = Extractor(funcs, consts, legacy_text, read)
    cases = []
    for file, name, body in tests:
        try:
            found = ex.extract(body)
        except (NotExtracted, IndexError) as e:
            skipped.append({"case": f"{file}:{name}", "reason": str(e) if isinstance(e, NotExtracted) else "parser: unexpected form"})
            continue
        for i, c in enumerate(found):
            cases.append(dict(c, file=file, name=name + (f"#{i + 1}" if i else ""), slug=name + (f"_{i + 1}" if i else "")))
    return {"files_read": len(files), "functions_seen": len(tests)}, cases, skipped


# ------------------------------------------------------------------ runs
def run_tool(cmd, cwd):
    """(stdout or None on failure, first line of stderr with cwd/ cut out)."""
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {TIMEOUT} s"
    lines = [re.sub(r"^[EWI]\d{4} [\d:.]+ +\d+ \S+\] ", "", l.strip()) for l in p.stderr.splitlines()]
    lines = [l for l in lines if l and not re.match(r"#? ?Warning", l)] + [f"exit code {p.returncode}"]
    err = (lines[0] + (" " + lines[1] if lines[0].endswith("<") else "")).replace(cwd + "/", "")
    return (p.stdout if p.returncode == 0 else None), err


class Unparsable(Exception):
    """An output that is not a YAML stream; the message says why."""


def parse(text):
    """The non-null documents of a YAML stream."""
    try:
        return [d for d in yaml.load_all(text, Loader=YamlLoader) if d is not None]
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        raise Unparsable((getattr(e, "problem", None) or str(e).split("\n")[0])
                         + (f" (line {where.line + 1})" if where else "")) from None


def brief(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def difference(got, want, path=""):
    """Where two parsed values first differ, as "PATH: GOT, want WANT" (None when equal)."""
    at = path + ": " if path else ""
    if isinstance(got, dict) and isinstance(want, dict):
        for key in list(want) + [k for k in got if k not in want]:
            sub = path + (f".{key}" if isinstance(key, str) and re.fullmatch(r"[\w-]+", key)
                          else f"[{json.dumps(key) if isinstance(key, str) else repr(key)}]")
            if key not in got or key not in want:
                return f"{sub}: {brief(got[key]) if key in got else 'absent'}, want {brief(want[key]) if key in want else 'absent'}"
            found = difference(got[key], want[key], sub)
            if found:
                return found
        return None
    if isinstance(got, list) and isinstance(want, list):
        found = next(filter(None, (difference(g, w, f"{path}[{i}]") for i, (g, w) in enumerate(zip(got, want)))), None)
        return found or (f"{at}{len(got)} items, want {len(want)}" if len(got) != len(want) else None)
    if isinstance(got, str) and isinstance(want, str) and got != want:
        line = os.path.commonprefix([got, want]).count("\n")  # multi-line strings: show the first differing line
        if line:
            nth = lambda text: re.findall(r"[^\n]*\n?", text)[line]
            return f"{at}line {line + 1}: {brief(nth(got))}, want {brief(nth(want))}"
    if type(got) is not type(want) or got != want:
        return f"{at}{brief(got)}, want {brief(want)}"
    return None


def mismatch(got, want):
    """None when the output text got matches the text want under the comparison rule, else a one-line reason."""
    if yaml is None:
        if got == want:
            return None
        a, b = want.split("\n"), got.split("\n")
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        show = lambda lines: repr(lines[i]) if i < len(lines) else "<end>"
        same = " (same lines in another order)" if sorted(a) == sorted(b) else ""
        return f"line {i + 1}: expected {show(a)}, got {show(b)}{same}"
    docs = []
    for side, text in (("the output", got), ("the expectation", want)):
        try:
            docs.append(parse(text))
        except Unparsable as e:
            return f"does not parse: {side}: {e}"
    got_docs, want_docs = docs
    count = f"{len(got_docs)} documents, want {len(want_docs)}" if len(got_docs) != len(want_docs) else ""
    diffs = ((i, difference(g, w)) for i, (g, w) in enumerate(zip(got_docs, want_docs)))
    first = next((f"doc {i}: {d}" for i, d in diffs if d), "")
    return "; ".join(filter(None, (count, first))) or None


def reordered(got, want):
    """Whether two outputs hold the same documents, in another order."""
    if yaml is None:
        docs = lambda text: sorted(text.rstrip("\n").split("\n---\n"))
        return docs(got) == docs(want)
    try:
        rest, want_docs = parse(got), parse(want)
    except Unparsable:
        return False
    for w in want_docs:
        i = next((i for i, g in enumerate(rest) if difference(g, w) is None), None)
        if i is None:
            return False
        del rest[i]
    return not rest


def verdict(expected, out, err, tool):
    """None when the output is what is expected (the text of a build, or None for an error), else a one-line reason."""
    if expected is None:
        return None if out is None else f"{tool} succeeded where the test expects an error"
    if out is None:
        return f"{tool} failed: {err}"
    return mismatch(out, expected)


def run_case(case, work, terrace):
    d = os.path.join(work, case["slug"])
    os.makedirs(d, exist_ok=True)
    for path, text in case["files"].items():
        full = os.path.join(d, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
    target = os.path.join(d, case["dir"])
    expected = case["expected"]
    if expected is not None and expected.startswith("\n"):
        expected = expected[1:]  # the harness ignores the expectation's leading newline
    reference, err = run_tool(["kubectl", "kustomize", target, *case["flags"]], d)
    case["kubectl"] = verdict(expected, reference, err, "kubectl")
    case["reordered"] = bool(case["kubectl"]) and None not in (expected, reference) and reordered(reference, expected)
    if case["reordered"]:
        case["kubectl"] = None
    if case["kubectl"] is None:  # kubectl's output is the expectation (in kubectl's order): the reference
        out, err = run_tool([terrace, "kustomize", "build", target, *case["flags"]], d)
        case["terrace"] = verdict(reference, out, err, "terrace")
        case["identical"] = not case["terrace"] and out is not None and out == reference
        case["output"], case["error"], case["reference"] = out, err, reference
    return case


def report(stats, cases, skipped, as_json):
    agreed = [c for c in cases if c["kubectl"] is None]
    failures = sorted(({"case": f"{c['file']}:{c['name']}", "reason": c["terrace"]} for c in agreed if c["terrace"]),
                      key=lambda f: f["case"])
    passes = len(agreed) - len(failures)
    builds = [c for c in agreed if not c["terrace"] and c["reference"] is not None]  # passes that are not expected errors
    groups = collections.defaultdict(collections.Counter)  # category -> details
    for s in skipped:
        category, _, detail = s["reason"].partition(": ")
        groups[category][detail] += 1
    groups = sorted(groups.items(), key=lambda g: -sum(g[1].values()))
    data = dict(stats, comparison="data" if yaml else "text", cases_extracted=len(cases), tests_not_extracted=len(skipped),
                not_extracted_by_reason={c: sum(d.values()) for c, d in groups}, not_extracted=skipped,
                kubectl_agrees=len(agreed), kubectl_agrees_up_to_order=sum(c["reordered"] for c in agreed),
                kubectl_disagrees=[{"case": f"{c['file']}:{c['name']}", "reason": c["kubectl"]} for c in cases if c["kubectl"]],
                terrace_passes=passes, pass_rate=round(100 * passes / len(agreed), 1) if agreed else None,
                passing_builds=len(builds), byte_identical=sum(c["identical"] for c in builds), failures=failures)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    print(f"Go test files read:        {stats['files_read']}")
    print(f"test functions seen:       {stats['functions_seen']}")
    print(f"cases extracted:           {len(cases)} (from {stats['functions_seen'] - len(skipped)} tests)")
    print(f"tests not extracted:       {len(skipped)}")
    for category, details in groups:
        shown = ", ".join(f"{d} x{n}" if n > 1 else d for d, n in details.most_common() if d)
        print(f"  {sum(details.values()):4d}  {category}" + (f" ({shown})" if shown else ""))
    print("comparison:                " + ("data (same documents in the same order with equal values; key order and"
                                             " formatting may differ)" if yaml else "text, byte for byte (no PyYAML)"))
    print(f"kubectl agrees with test:  {len(agreed)} ({data['kubectl_agrees_up_to_order']} of them up to document order;"
          f" disagrees: {len(cases) - len(agreed)})")
    print(f"terrace passes:            {passes} / {len(agreed)}"
          + (f" = {data['pass_rate']}%" if agreed else ""))
    print(f"  byte-identical to kubectl: {data['byte_identical']} of the {len(builds)} passing builds"
          f" (the other {passes - len(builds)} passes are expected errors)")
    if failures:
        print("\nfailing cases:")
        for f in failures:
            print(f"{f['case']}  {f['reason']}")


def show(case):
    print(f"{case['file']}:{case['name']}  (run in {case['dir'] or '.'}, flags {case['flags']})")
    if case["kubectl"]:
        print(f"kubectl does not agree with the test: {case['kubectl']}")
        return
    if case["reference"] is None or case["output"] is None:
        print(f"expected: {'an error' if case['reference'] is None else 'success'}; "
              f"terrace: {'error: ' + case['error'] if case['output'] is None else 'success'}")
        return
    sys.stdout.writelines(difflib.unified_diff(case["reference"].splitlines(True), case["output"].splitlines(True),
                                               "kubectl" + (" (the expectation in another order)" if case["reordered"] else ""),
                                               "terrace"))
    print(f"verdict: {case['terrace'] or 'pass'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=os.environ.get("KUSTOMIZE_SRC") or (MIRROR if os.path.exists(MIRROR) else None))
    ap.add_argument("--terrace", default=os.environ.get("TERRACE_BIN") or os.path.join(ROOT, "target", "release", "terrace"))
    ap.add_argument("--filter", default="")
    ap.add_argument("--keep")
    ap.add_argument("--show")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        re.compile(args.filter)
    except re.error as e:
        ap.error(f"--filter: {e}")
    source = open_source(args.src) if args.src else None
    if source is None:
        print("skipped: no kustomize source (set KUSTOMIZE_SRC)", file=sys.stderr)
        return 0
    if not os.access(args.terrace, os.X_OK):
        ap.error(f"no terrace binary at {args.terrace} (build it, or pass --terrace / TERRACE_BIN)")
    if shutil.which("kubectl") is None:
        print("skipped: kubectl not found", file=sys.stderr)
        return 0
    if yaml is None:
        print("PyYAML is not installed: comparing output text byte for byte instead of data", file=sys.stderr)
    stats, cases, skipped = extract_all(*source, args.filter)
    if args.show:
        cases = [c for c in cases if args.show in (c["name"], f"{c['file']}:{c['name']}")]
        if not cases:
            ap.error(f"--show: no extracted case named {args.show}")
    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="terrace-krusty-")
    os.makedirs(work, exist_ok=True)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            cases = list(pool.map(lambda c: run_case(c, work, os.path.abspath(args.terrace)), cases))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.show:
        show(cases[0])
    else:
        report(stats, cases, skipped, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
