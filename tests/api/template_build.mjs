// A template built by the npm `e2b` SDK against `hearth serve` (recipe A): a COPY (the
// JS upload path), a RUN and a tag, then a sandbox of it. Prints `RESULT <name> <json>`.
import { Sandbox, Template } from 'e2b'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const result = (name, value) => console.log(`RESULT ${name} ${JSON.stringify(value)}`)
const name = process.env.HEARTH_TEMPLATE_NAME
const context = mkdtempSync(join(tmpdir(), 'hearth-js-template-'))
writeFileSync(join(context, 'file.txt'), 'copied by js\n')

const template = Template({ fileContextPath: context })
  .fromTemplate('base')
  .copy('file.txt', '/home/user/file.txt')
  .runCmd('echo built > /home/user/built')
const messages = []
const info = await Template.build(template, `${name}:js`, {
  cpuCount: 1,
  memoryMB: 512,
  onBuildLogs: (entry) => messages.push(entry.message),
})
result('info', { templateId: info.templateId, buildId: info.buildId, tags: info.tags })
result('uploaded', messages.some((m) => m.includes("Uploaded 'file.txt'")))
result('exists', await Template.exists(name))
result('tags', (await Template.getTags(name)).map((t) => t.tag).sort())
const sandbox = await Sandbox.create(`${name}:js`)
try {
  const out = await sandbox.commands.run('cat /home/user/file.txt /home/user/built')
  result('stdout', out.stdout)
} finally {
  await sandbox.kill()
}
