// The npm `@e2b/code-interpreter` SDK against `hearth serve` (recipe A): runCode in every
// language, streaming, results, errors, env vars, contexts, a timeout and a killed sandbox.
//
// Run by tests/interpreter/test_npm.py from this directory, with the E2B_* variables of
// recipe A set. Prints `RESULT <name> <json>` per check and exits non-zero at the first
// failure.
import { Sandbox } from '@e2b/code-interpreter'

function record(name, value) {
  console.log(`RESULT ${name} ${JSON.stringify(value)}`)
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`)
}

async function main() {
  const sbx = await Sandbox.create({ envs: { FROM_CREATE: 'js create' }, timeoutMs: 300_000 })
  try {
    const stdout = []
    const first = await sbx.runCode('x = 40\nprint("hello")\nx + 2', {
      onStdout: (m) => stdout.push(m.line),
    })
    check(first.text === '42', `text ${first.text}`)
    check(stdout.join('') === 'hello\n', `stdout ${JSON.stringify(stdout)}`)
    record('python', first.text)
    check((await sbx.runCode('x')).text === '40', 'state')

    const js = await sbx.runCode('const a: number = 21; a * 2', { language: 'ts' })
    check(js.text === '42', `ts ${js.text}`)
    const bash = await sbx.runCode('echo $FROM_CREATE', { language: 'bash' })
    check(bash.logs.stdout.join('') === 'js create\n', `bash ${JSON.stringify(bash.logs)}`)
    const r = await sbx.runCode('1 + 1', { language: 'r' })
    check(r.results[0].text === '[1] 2', `r ${JSON.stringify(r.results)}`)
    record('languages', ['python', 'typescript', 'bash', 'r'])

    const decl = await sbx.runCode('int x = 40;', { language: 'java' })
    check(!decl.error && decl.results.length === 0, `java decl ${JSON.stringify(decl)}`)
    check((await sbx.runCode('x + 2', { language: 'java' })).text === '42', 'java state')
    const jenv = await sbx.runCode('System.getProperty("PER_RUN")', {
      language: 'java',
      envs: { PER_RUN: 'java yes' },
    })
    check(jenv.text === 'java yes', `java env ${jenv.text}`)
    const jchild = await sbx.runCode(
      'new String(new ProcessBuilder("printenv", "PER_RUN").start().getInputStream().readAllBytes())',
      { language: 'java', envs: { PER_RUN: 'child yes' } },
    )
    check(jchild.text === 'child yes\n', `java child env ${JSON.stringify(jchild.text)}`)
    const jerr = await sbx.runCode('int zero = 0; 1 / zero', { language: 'java' })
    check(jerr.error && jerr.error.name === 'EvalException', `java error ${JSON.stringify(jerr.error)}`)
    check(jerr.error.traceback.includes('ArithmeticException'), 'java traceback')
    const jctx = await sbx.createCodeContext({ cwd: '/tmp', language: 'java' })
    const jcwd = await sbx.runCode('System.getProperty("user.dir")', { context: jctx })
    check(jcwd.text === '/tmp', `java cwd ${jcwd.text}`)
    await sbx.removeCodeContext(jctx)
    let javaTimedOut = false
    try {
      await sbx.runCode('while (true) { Thread.sleep(50); }', { language: 'java', timeoutMs: 1500 })
    } catch (e) {
      javaTimedOut = e.name === 'TimeoutError'
    }
    check(javaTimedOut, 'java timeout')
    check((await sbx.runCode('x', { language: 'java' })).text === '40', 'java after the timeout')
    record('java', true)

    const env = await sbx.runCode('import os\nos.environ["PER_RUN"]', { envs: { PER_RUN: 'yes' } })
    check(env.text === 'yes', `env ${env.text}`)
    const gone = await sbx.runCode('import os\nos.environ.get("PER_RUN", "unset")')
    check(gone.text === 'unset', `env restored ${gone.text}`)

    const plot = await sbx.runCode(
      'import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.title("js")\nplt.show()',
    )
    const figure = plot.results.find((res) => res.png)
    check(figure && figure.chart && figure.chart.type === 'line', 'chart')
    check(figure.chart.title === 'js', `chart title ${figure.chart.title}`)
    record('chart', figure.chart.type)

    const failed = await sbx.runCode('raise ValueError("bad")')
    check(failed.error.name === 'ValueError' && failed.error.value === 'bad', 'error')
    check(failed.error.traceback.includes('ValueError'), 'traceback')

    const ctx = await sbx.createCodeContext({ cwd: '/tmp', language: 'python' })
    check((await sbx.runCode('import os\nos.getcwd()', { context: ctx })).text === '/tmp', 'cwd')
    const contexts = await sbx.listCodeContexts()
    check(contexts.some((c) => c.id === ctx.id), 'listed')
    await sbx.restartCodeContext(ctx)
    await sbx.removeCodeContext(ctx)
    record('contexts', contexts.length)

    let timedOut = false
    try {
      await sbx.runCode('import time\nwhile True: time.sleep(0.05)', { timeoutMs: 1500 })
    } catch (e) {
      timedOut = e.name === 'TimeoutError'
    }
    check(timedOut, 'timeout')
    check((await sbx.runCode('"next run"')).text === 'next run', 'after timeout')
    record('timeout', true)
  } finally {
    await sbx.kill()
  }
  let killed = 'none'
  try {
    await sbx.runCode('1')
  } catch (e) {
    killed = e.name
  }
  record('killed', killed)
  record('done', true)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
