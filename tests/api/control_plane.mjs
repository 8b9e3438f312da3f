// The npm `e2b` SDK against `hearth serve` (recipe A): the control plane and the gateway.
//
// Run by tests/api/test_npm.py from tests/sdk/npm (where `e2b` is installed), with the
// E2B_* variables of recipe A set. Prints `RESULT <name> <json>` per check and exits
// non-zero at the first failure.
import { Sandbox } from 'e2b'

function record(name, value) {
  console.log(`RESULT ${name} ${JSON.stringify(value)}`)
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`)
}

async function main() {
  const tag = `js${Date.now()}`
  const sbx = await Sandbox.create({ metadata: { tag, spaced: 'a b' }, envs: { FOO: 'js' }, timeoutMs: 60_000 })
  record('sandboxId', sbx.sandboxId)
  const out = await sbx.commands.run('echo $FOO')
  check(out.stdout === 'js\n', `stdout ${JSON.stringify(out.stdout)}`)
  await sbx.files.write('js.txt', 'from js')
  check((await sbx.files.read('js.txt')) === 'from js', 'file round trip')

  const info = await sbx.getInfo()
  check(info.metadata.tag === tag && info.metadata.spaced === 'a b', 'metadata')
  const listed = await Sandbox.list({ query: { metadata: { tag, spaced: 'a b' } } }).nextItems()
  check(listed.length === 1 && listed[0].sandboxId === sbx.sandboxId, `list ${listed.length}`)
  record('listed', listed.length)

  const again = await Sandbox.connect(sbx.sandboxId)
  check((await again.commands.run('cat js.txt')).stdout === 'from js', 'connect')

  await sbx.setTimeout(30_000)
  check(await sbx.isRunning(), 'running')
  await sbx.kill()
  check(!(await sbx.isRunning()), 'killed')
  record('done', true)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
