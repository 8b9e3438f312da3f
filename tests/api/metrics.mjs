// The npm `e2b` SDK's metrics against `hearth serve` (recipe A): `sbx.getMetrics()` and
// the static `Sandbox.getMetrics(id, {start, end})`.
//
// Run by tests/api/test_metrics.py from tests/sdk/npm (where `e2b` is installed), with
// the E2B_* variables of recipe A set. Prints `RESULT <name> <json>` per check and exits
// non-zero at the first failure.
import { Sandbox } from 'e2b'

function record(name, value) {
  console.log(`RESULT ${name} ${JSON.stringify(value)}`)
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function main() {
  const sbx = await Sandbox.create({ timeoutMs: 120_000 })
  try {
    const first = await sbx.getMetrics()
    check(first.length >= 1, `a first sample, got ${first.length}`)
    // Samples come every few seconds: wait (bounded) for three.
    let kept = first
    for (let i = 0; i < 60 && kept.length < 3; i++) {
      await sleep(1000)
      kept = await sbx.getMetrics()
    }
    check(kept.length >= 3, `three samples, got ${kept.length}`)
    for (const m of kept) {
      check(m.timestamp instanceof Date, 'a Date')
      check(m.memTotal === 512 * 2 ** 20, `memTotal ${m.memTotal}`)
      check(m.memUsed > 0 && m.memUsed < m.memTotal, `memUsed ${m.memUsed}`)
      check(m.diskTotal > 0 && m.diskUsed <= m.diskTotal, 'disk')
    }
    record('cpuCount', kept[0].cpuCount)
    record('memTotal', kept[0].memTotal)
    const start = new Date(kept[1].timestamp.getTime() + 1000)
    const later = await Sandbox.getMetrics(sbx.sandboxId, { start })
    check(later.length >= 1, 'samples since the second one')
    check(later.every((m) => m.timestamp.getTime() >= start.getTime() - 1000), 'start honoured')
    const end = new Date(kept[1].timestamp.getTime() + 1000)
    const early = await Sandbox.getMetrics(sbx.sandboxId, { end })
    check(early.length >= 1 && early.every((m) => m.timestamp <= end), 'end honoured')
    record('ranges', true)
  } finally {
    await sbx.kill()
  }
  // Its history outlives it (for the retention), as infra keeps it; an id that never
  // was is not found.
  const after = await Sandbox.getMetrics(sbx.sandboxId)
  record('keptAfterKill', after.length >= 3)
  let missing = null
  try {
    await Sandbox.getMetrics('d0000000000000000000')
  } catch (e) {
    missing = e.name
  }
  record('unknown', missing)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
