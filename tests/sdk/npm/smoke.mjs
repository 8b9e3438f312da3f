// Smoke test of the npm `e2b` SDK against one envd, in debug mode.
//
// Run by tests/sdk/test_npm_smoke.py with E2B_DEBUG=true and E2B_SANDBOX_URL set. Prints
// one line `RESULT <name> <json>` per check and exits non-zero at the first failure.
import { CommandExitError, FilesystemEventType, FileType, Sandbox } from 'e2b'

const results = {}

function record(name, value) {
  results[name] = value
  console.log(`RESULT ${name} ${JSON.stringify(value)}`)
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`)
}

// Polls `cond` a bounded number of times (no timing is asserted).
async function until(cond, what, rounds = 200) {
  for (let i = 0; i < rounds; i++) {
    if (cond()) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`gave up waiting for ${what}`)
}

async function main() {
  const sbx = await Sandbox.create()
  record('sandboxId', sbx.sandboxId)

  // commands.run
  const echo = await sbx.commands.run('echo hello; echo err >&2')
  check(echo.exitCode === 0 && echo.stdout === 'hello\n' && echo.stderr === 'err\n', 'echo')
  record('echo', echo.stdout)

  let exitCode = null
  try {
    await sbx.commands.run('exit 3')
  } catch (e) {
    check(e instanceof CommandExitError, `CommandExitError, got ${e}`)
    exitCode = e.exitCode
  }
  check(exitCode === 3, 'exit code 3')
  record('exitCode', exitCode)

  const who = await sbx.commands.run('whoami; pwd')
  check(who.stdout === 'user\n/home/user\n', `whoami/pwd: ${JSON.stringify(who.stdout)}`)
  record('whoami', who.stdout)

  // background command + kill
  const bg = await sbx.commands.run('sleep 30', { background: true })
  check(bg.pid > 0, 'background pid')
  const listed = (await sbx.commands.list()).map((p) => p.pid)
  check(listed.includes(bg.pid), 'background command listed')
  const killed = await sbx.commands.kill(bg.pid)
  check(killed === true, 'kill returns true')
  let bgExit = null
  try {
    await bg.wait()
  } catch (e) {
    check(e instanceof CommandExitError, `killed wait() throws CommandExitError, got ${e}`)
    bgExit = e.exitCode
  }
  record('killedExitCode', bgExit)
  check(!(await sbx.commands.list()).map((p) => p.pid).includes(bg.pid), 'killed not listed')
  check((await sbx.commands.kill(999999)) === false, 'kill unknown returns false')
  record('kill', true)

  // stdin on a background command
  const cat = await sbx.commands.run('cat', { background: true, stdin: true })
  await sbx.commands.sendStdin(cat.pid, 'piped\n')
  await sbx.commands.closeStdin(cat.pid)
  const catResult = await cat.wait()
  check(catResult.stdout === 'piped\n', `stdin: ${JSON.stringify(catResult.stdout)}`)
  record('stdin', catResult.stdout)

  // pty
  let ptyOut = ''
  const decoder = new TextDecoder()
  const pty = await sbx.pty.create({
    cols: 80,
    rows: 24,
    onData: (d) => {
      ptyOut += decoder.decode(d, { stream: true })
    },
  })
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('echo $((6*7))xyz\n'))
  await until(() => ptyOut.includes('42xyz'), 'pty output')
  await sbx.pty.resize(pty.pid, { cols: 100, rows: 40 })
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('echo R$(stty size)E\n'))
  await until(() => ptyOut.includes('R40 100E'), 'pty resize')
  check((await sbx.pty.kill(pty.pid)) === true, 'pty kill')
  record('pty', true)

  // files
  const dir = `/home/user/npm-smoke-${Date.now()}`
  check((await sbx.files.makeDir(dir)) === true, 'makeDir')
  check((await sbx.files.makeDir(dir)) === false, 'makeDir again is false')
  const info = await sbx.files.write(`${dir}/a.txt`, 'from node')
  check(info.path === `${dir}/a.txt`, 'write info path')
  check((await sbx.files.read(`${dir}/a.txt`)) === 'from node', 'read text')
  const bytes = await sbx.files.read(`${dir}/a.txt`, { format: 'bytes' })
  check(bytes.length === 9, 'read bytes')
  await sbx.files.write(`${dir}/sub/b.txt`, 'b')
  const entries = await sbx.files.list(dir, { depth: 2 })
  const names = entries.map((e) => e.path.slice(dir.length + 1))
  check(JSON.stringify(names) === JSON.stringify(['a.txt', 'sub', 'sub/b.txt']), `list ${names}`)
  check(entries[0].type === FileType.FILE && entries[1].type === FileType.DIR, 'entry types')
  record('list', names)
  check((await sbx.files.exists(`${dir}/a.txt`)) === true, 'exists')
  check((await sbx.files.exists(`${dir}/nope`)) === false, 'not exists')
  const stat = await sbx.files.getInfo(`${dir}/a.txt`)
  check(stat.size === 9 && stat.owner === 'user' && stat.permissions === '-rw-r--r--', 'getInfo')
  await sbx.files.rename(`${dir}/a.txt`, `${dir}/c.txt`)
  check((await sbx.files.read(`${dir}/c.txt`)) === 'from node', 'rename')
  record('files', true)

  // watchDir (streaming WatchDir RPC)
  const events = []
  const watcher = await sbx.files.watchDir(dir, (e) => events.push(e), { recursive: true })
  await sbx.files.write(`${dir}/sub/watched.txt`, 'watch me')
  await until(
    () => events.some((e) => e.type === FilesystemEventType.WRITE && e.name === 'sub/watched.txt'),
    'watch write event',
  )
  await watcher.stop()
  const first = events.find((e) => e.name === 'sub/watched.txt')
  check(first.type === FilesystemEventType.CREATE, `first event ${first.type}`)
  record(
    'watch',
    events.map((e) => [e.type, e.name]),
  )

  await sbx.files.remove(dir)
  check((await sbx.files.exists(dir)) === false, 'remove')
  record('remove', true)
  console.log('SMOKE OK')
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`SMOKE FAILED: ${err?.stack ?? err}`)
    process.exit(1)
  },
)
