"""What a javascript or typescript kernel (deno) runs before its first execution, so that
its results read as those of E2B's javascript kernel.

E2B's template installs its fork of ijavascript (`npm install -g
git+https://github.com/e2b-dev/ijavascript.git`, then `ijsinstall --install=global`).
There a cell's value goes through nel's `defaultMimer`: `text/plain` is node's
`util.inspect(value)` (`'abc'`, `{ a: 1 }`, `[ 1, 2 ]`); a promise is awaited and its
value shown (nel's `onRunRequest`, which is how a top-level `await` gives its value);
`undefined` shows nothing (`ijsinstall` writes `--hide-undefined` into the kernelspec);
a rejected promise is an error named after the error (nel's `formatError`). E2B's
server then strips the quotes around a string (`'abc'` -> `abc`, spec §4.2), as Hearth's
`_outputs.result` does. Deno's own results are `Deno.inspect`'s (`"abc"`,
`{ a: 1, b: "x" }`, `Promise { 1 }`).

So the kernel's `broadcastResult`, which deno calls with each cell's value, is replaced
by one that keeps deno's rich displays (`Deno.jupyter.html`, images, objects with a
`Symbol.for("Jupyter.display")` method) and shows everything else with `node:util`'s
`inspect`, node's own algorithm. Everything is inside a block, so the user's scope sees
no new names; an older or newer deno without the hook is left as it is.
"""

PRELUDE = """\
{
  const jupyter = Deno[Deno.internal]?.jupyter;
  if (typeof jupyter?.broadcastResult === "function") {
    const { inspect } = await import("node:util");
    const display = Symbol.for("Jupyter.display");
    const isObject = (v) => (typeof v === "object" && v !== null) || typeof v === "function";
    jupyter.broadcastResult = async (executionCount, result) => {
      try {
        const value = isObject(result) && typeof result.then === "function" ? await result : result;
        if (value === undefined) return;
        let data = await Deno.jupyter.format(value);
        const plain = Object.keys(data).length === 1 && "text/plain" in data;
        if (plain && !(isObject(value) && typeof value[display] === "function")) {
          data = { "text/plain": inspect(value) };
        }
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
