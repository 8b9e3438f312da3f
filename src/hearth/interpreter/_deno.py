"""What a javascript or typescript kernel (deno) runs before its first execution, so that
its results and console output read as those of E2B's javascript kernel.

E2B's template installs its fork of ijavascript (`npm install -g
git+https://github.com/e2b-dev/ijavascript.git`, then `ijsinstall --install=global`).
There a cell's value goes through nel's `defaultMimer`: `text/plain` is node's
`util.inspect(value)` (`'abc'`, `{ a: 1 }`, `[ 1, 2 ]`, `null`, `NaN`, `-0`, `10n`); a
promise is awaited and its value shown (nel's `onRunRequest`, which is how a top-level
`await` gives its value); `undefined` shows nothing (`ijsinstall` writes
`--hide-undefined` into the kernelspec); a rejected promise is an error named after the
error (nel's `formatError`). E2B's server then strips the quotes around a string (`'abc'`
-> `abc`, spec §4.2), as Hearth's `_outputs.result` does. nel runs the cell with a
`console.Console` of node's writing to the cell's stdout and stderr, so `console.log`
prints as node's `util.format` does (`{ a: 'x' }`, `%s`, `%d`, `%o`, strings raw, the
arguments joined by a space). Deno's own are `Deno.inspect`'s (`"abc"`, `{ a: 1, b: "x" }`,
`Promise { 1 }`).

So, in the kernel:
- The kernel's `broadcastResult`, which deno calls with each cell's value, is replaced by
  one that keeps deno's rich displays (`Deno.jupyter.html`, images, objects with a
  `Symbol.for("Jupyter.display")` method) and shows everything else with `node:util`'s
  `inspect`, node's own algorithm.
- Deno (2.9) hands that hook `undefined` for `null`, `NaN`, `Infinity`, `-0` and bigints:
  values the inspector protocol carries by value rather than by object id, which deno's
  call into the hook loses. V8 resolves
  each REPL evaluation's promise with `{".repl_result": value}` in the kernel itself, so a
  promise hook keeps the last 256 promises resolved, and the result hook reads the value
  from the latest such object when deno gave it `undefined`. Should the code's background
  work have resolved more promises than that before deno calls the result hook, the value
  shows as deno would show it (nothing). The promise hook runs for every promise the
  kernel resolves (it doubles the cost of a bare `await`, ~40 ns), so it only stores the
  promise: its value is not set yet when the hook runs, and looking later (a microtask
  per promise) costs twenty times as much.
- `console`'s methods are those of a `Console` of `node:console` (deno's port of node's)
  writing through the kernel's own print: deno's jupyter kernel sends what deno's console
  prints as `stream` messages, and drops what goes to `process.stdout`. The global object
  stays deno's: node's `process`, once first used, binds the global console's streams to
  its own (those `process.stdout` writes). So `process.stdout.write` and
  `process.stderr.write` print through the kernel too (strings, or bytes as UTF-8; the
  callback called as node's stream would), as they do in node's kernel.

Everything is inside a block, so the user's scope sees no new names; an older or newer
deno without these internals is left as it is.
"""

PRELUDE = """\
{
  const internal = Deno[Deno.internal];
  const jupyter = internal?.jupyter;
  const core = internal?.core;
  if (typeof core?.print === "function") {
    const { Console } = await import("node:console");
    const stream = (stderr) => ({ write: (text) => (core.print(String(text), stderr), true) });
    const node = new Console({
      stdout: stream(false), stderr: stream(true), colorMode: false, ignoreErrors: false,
    });
    for (const name of Object.keys(Console.prototype)) {
      if (typeof node[name] === "function") console[name] = node[name];
    }
    const { default: process } = await import("node:process");
    const decoder = new TextDecoder();
    const printing = (stderr) => (chunk, encoding, callback) => {
      if (typeof encoding === "function") callback = encoding;
      core.print(typeof chunk === "string" ? chunk : decoder.decode(chunk), stderr);
      if (typeof callback === "function") queueMicrotask(() => callback(null));
      return true;
    };
    process.stdout.write = printing(false);
    process.stderr.write = printing(true);
  }
  if (typeof jupyter?.broadcastResult === "function") {
    const { inspect } = await import("node:util");
    const display = Symbol.for("Jupyter.display");
    const isObject = (v) => (typeof v === "object" && v !== null) || typeof v === "function";
    const dropped = (v) => v === undefined || v === null || typeof v === "bigint" ||
      (typeof v === "number" && (!Number.isFinite(v) || Object.is(v, -0)));
    const resolved = new Array(256);
    let next = 0;
    let completion = () => undefined;
    if (typeof core.setPromiseHooks === "function" &&
        typeof core.getPromiseDetails === "function") {
      core.setPromiseHooks(null, null, null, (promise) => {
        resolved[next] = promise;
        next = (next + 1) % resolved.length;
      });
      // The value of the latest REPL evaluation among the promises resolved since the
      // last result: the cell's own. (One deno passes on itself cannot be what it lost.)
      completion = () => {
        let value;
        for (let i = 1; i <= resolved.length; i++) {
          const promise = resolved[(next - i + resolved.length) % resolved.length];
          if (promise === undefined) break;
          const [state, result] = core.getPromiseDetails(promise);
          if (state === 1 && typeof result === "object" && result !== null &&
              !core.isProxy?.(result) && Object.hasOwn(result, ".repl_result")) {
            value = dropped(result[".repl_result"]) ? result[".repl_result"] : undefined;
            break;
          }
        }
        return value;
      };
    }
    jupyter.broadcastResult = async (executionCount, result) => {
      try {
        const found = result === undefined ? completion() : result;
        resolved.fill(undefined);
        const value = isObject(found) && typeof found.then === "function" ? await found : found;
        if (value === undefined) return;
        const rich = isObject(value) ? await Deno.jupyter.format(value) : {};
        const custom = isObject(value) && typeof value[display] === "function";
        const plain = Object.keys(rich).every((mime) => mime === "text/plain");
        const data = custom || !plain ? rich : { "text/plain": inspect(value) };
        await Deno.jupyter.broadcast("execute_result", {
          execution_count: executionCount, data, metadata: {}, transient: {},
        });
      } catch (error) {
        await Deno.jupyter.broadcast("error", {
          ename: error?.name || typeof error,
          evalue: error?.message || inspect(error),
          traceback: error?.stack ? String(error.stack).split("\\n") : [],
        });
      }
    };
  }
}
"""
