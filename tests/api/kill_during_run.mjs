// A command's wait() when its sandbox is killed, through the npm `e2b` SDK against
// `hearth serve` (recipe A). Prints `RESULT <name> <json>` lines.
import { Sandbox } from 'e2b'

const result = (name, value) => console.log(`RESULT ${name} ${JSON.stringify(value)}`)
const sbx = await Sandbox.create('base', { timeoutMs: 120_000 })
// The command's own deadline only bounds a stream that would never end.
const handle = await sbx.commands.run('sleep 600', { background: true, timeoutMs: 120_000 })
result('killed', await sbx.kill())
try {
  await handle.wait()
  result('waited', 'no error')
} catch (e) {
  result('waited', { name: e.name, message: e.message })
}
result('running', await sbx.isRunning())
