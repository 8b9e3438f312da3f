// Snapshots and a fork through the npm `e2b` SDK against `hearth serve` (recipe A): a
// named snapshot, two sandboxes of it, the list, a fork of 2, deletion.
// Prints `RESULT <name> <json>` lines.
import { Sandbox } from 'e2b'

const result = (name, value) => console.log(`RESULT ${name} ${JSON.stringify(value)}`)
const name = process.env.HEARTH_SNAPSHOT_NAME
const source = await Sandbox.create('base')
try {
  await source.files.write('/home/user/js.txt', 'from js')
  const snapshot = await source.createSnapshot({ name })
  result('snapshot', snapshot)
  const listed = await Sandbox.listSnapshots({ sandboxId: source.sandboxId }).nextItems()
  result('listed', listed.map((s) => s.snapshotId))
  for (const ref of [snapshot.snapshotId, name]) {
    const copy = await Sandbox.create(ref)
    try {
      result(`read:${ref}`, await copy.files.read('/home/user/js.txt'))
    } finally {
      await copy.kill()
    }
  }
  const forks = await source.fork({ count: 2, timeout: 60 })
  result('forks', forks.length)
  for (const fork of forks) {
    result('fork-read', await fork.files.read('/home/user/js.txt'))
    await fork.kill()
  }
  result('running', await source.isRunning())
  result('deleted', await Sandbox.deleteSnapshot(snapshot.snapshotId))
  result('deleted-again', await Sandbox.deleteSnapshot(snapshot.snapshotId))
} finally {
  await source.kill()
}
