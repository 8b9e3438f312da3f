// Preloaded (`node -r`) for a wildcard-domain run: `HEARTH_TEST_DOMAIN` and every name
// under it resolve to 127.0.0.1, as a wildcard DNS record pointing at the server would.
const dns = require('dns')

const domain = process.env.HEARTH_TEST_DOMAIN
const lookup = dns.lookup
dns.lookup = function (hostname, options, callback) {
  if (typeof options === 'function') {
    callback = options
    options = {}
  }
  if (domain && (hostname === domain || hostname.endsWith(`.${domain}`))) {
    const all = typeof options === 'object' && options !== null && options.all
    const address = { address: '127.0.0.1', family: 4 }
    return process.nextTick(() => (all ? callback(null, [address]) : callback(null, '127.0.0.1', 4)))
  }
  return lookup.call(this, hostname, options, callback)
}
