// The npm `@e2b/code-interpreter` SDK on E2B's cases (tests/interpreter/e2b_cases.py):
// javascript/typescript results and console output, and every chart type. Run by
// tests/interpreter/test_npm.py with the E2B_* variables of recipe A set and a JSON file of
// the cases as argument: {"js": [[language, code], ...], "logs": [[language, code], ...],
// "charts": {name: code}}. Prints `RESULT <name> <json>` per case; the Python side asserts
// what E2B's tests expect.
import { readFileSync } from 'node:fs'

import { Sandbox } from '@e2b/code-interpreter'

function record(name, value) {
  console.log(`RESULT ${name} ${JSON.stringify(value)}`)
}

async function main() {
  const cases = JSON.parse(readFileSync(process.argv[2], 'utf8'))
  const sbx = await Sandbox.create({ envs: { SANDBOX_VAR: 'from create' }, timeoutMs: 600_000 })
  try {
    for (const [i, [language, code]] of cases.js.entries()) {
      const execution = await sbx.runCode(code, { language })
      record(`js:${i}`, {
        text: execution.text ?? null,
        results: execution.results.length,
        error: execution.error ? execution.error.name : null,
      })
    }
    for (const [i, [language, code]] of cases.logs.entries()) {
      const execution = await sbx.runCode(code, { language })
      record(`logs:${i}`, {
        stdout: execution.logs.stdout.join(''),
        stderr: execution.logs.stderr.join(''),
        error: execution.error ? execution.error.name : null,
      })
    }
    for (const [name, code] of Object.entries(cases.charts)) {
      const execution = await sbx.runCode(code)
      const chart = execution.results.find((r) => r.png)?.chart
      record(`chart:${name}`, { chart: chart ?? null, error: execution.error?.name ?? null })
    }
  } finally {
    await sbx.kill()
  }
  record('done', true)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
