// The everyday calls of one released npm `e2b` SDK against `hearth serve`.
//
// Run by tests/sdk/test_releases.py from a directory with that release installed, with
// the E2B_* variables set. Written for every release since 1.5 (which has no pause);
// prints `RESULT <step> <json>` after each step and exits non-zero at the first failure.
import { Sandbox } from 'e2b'

const result = (step, value) => console.log(`RESULT ${step} ${JSON.stringify(value)}`)
const path = '/home/user/release.txt'
const content = `from e2b ${process.argv[2]}`

const sbx = await Sandbox.create('base', { timeoutMs: 120_000 })
result('create', sbx.sandboxId)
let killed
try {
  result('run', (await sbx.commands.run('echo hello')).stdout)
  await sbx.files.write(path, content)
  result('read', (await sbx.files.read(path)) === content)
  const pause = sbx.pause ?? sbx.betaPause
  if (pause === undefined) {
    result('pause', 'absent')
  } else {
    await pause.call(sbx)
    result('pause', await sbx.isRunning())
  }
  const again = await Sandbox.connect(sbx.sandboxId)
  result('connect', again.sandboxId === sbx.sandboxId && (await again.isRunning()))
  result('reconnected', (await again.commands.run(`cat ${path}`)).stdout === content)
} finally {
  killed = await sbx.kill()
}
result('kill', [killed, await sbx.isRunning()])
