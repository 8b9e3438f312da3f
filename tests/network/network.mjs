// Network rules through the npm `e2b` SDK against `hearth serve`: allowOut over a deny
// of all, updateNetwork while running, a malformed rule refused.
// Prints `RESULT <name> <json>` lines.
import { ALL_TRAFFIC, Sandbox } from 'e2b'

const result = (name, value) => console.log(`RESULT ${name} ${JSON.stringify(value)}`)
const [allowed, denied] = [process.env.HEARTH_ALLOWED_URL, process.env.HEARTH_DENIED_URL]
const reaches = async (sbx, url) => {
  try {
    await sbx.commands.run(`curl -sS --connect-timeout 3 --max-time 6 -o /dev/null ${url}`)
    return true
  } catch {
    return false
  }
}
const allowedHost = new URL(allowed).hostname
const sbx = await Sandbox.create('base', {
  network: { allowOut: [allowedHost], denyOut: [ALL_TRAFFIC] },
})
try {
  result('created', [await reaches(sbx, allowed), await reaches(sbx, denied)])
  await sbx.updateNetwork({ denyOut: [allowedHost] })
  result('updated', [await reaches(sbx, allowed), await reaches(sbx, denied)])
  await sbx.updateNetwork({})
  result('cleared', [await reaches(sbx, allowed), await reaches(sbx, denied)])
  try {
    await sbx.updateNetwork({ denyOut: ['example.com'] })
    result('malformed', 'accepted')
  } catch (e) {
    result('malformed', e.message)
  }
} finally {
  await sbx.kill()
}
