// Runs the http-cache-tests suite (npm package, pinned by cache_tests.py) against one cache and
// prints one JSON document: the suite's own results ({id: true | [kind, message]}), each test's
// uuid (so cache_tests.py can ask the suite's server what reached it), and the tests' metadata.
//
// Usage: node cache_tests_run.mjs PACKAGE_DIR BASE_URL [ID_PREFIX ...]
// (the suite's cli.mjs does the same without uuids or metadata; ID_PREFIX selects tests by id or
// suite id prefix).
import { createRequire } from 'module'
import path from 'path'
import { pathToFileURL } from 'url'

const [pkgDir, baseUrl, ...prefixes] = process.argv.slice(2)
const load = rel => import(pathToFileURL(path.join(pkgDir, rel)).href)
const fetch = createRequire(path.join(pkgDir, 'package.json'))('node-fetch')

const { runTests, getResults } = await load('client/runner.mjs')
const { testUUIDs } = await load('client/test.mjs')
const tests = (await load('tests/index.mjs')).default
tests.push((await load('tests/surrogate-control.mjs')).default)

const wanted = t => prefixes.length === 0 || prefixes.some(p => t.id.startsWith(p))
const selected = tests.map(suite => ({
  ...suite,
  tests: suite.tests.filter(t => wanted(t) || prefixes.some(p => suite.id.startsWith(p)))
})).filter(suite => suite.tests.length > 0)

const meta = []
for (const suite of selected) {
  for (const t of suite.tests) {
    if (t.browser_only === true) continue
    meta.push({
      id: t.id,
      suite: suite.id,
      suite_name: suite.name,
      name: t.name,
      kind: t.kind || 'required',
      depends_on: t.depends_on || [],
      spec_anchors: t.spec_anchors || [],
      requests: t.requests.map(r => ({
        expected_type: r.expected_type,
        expected_status: r.expected_status,
        response_status: r.response_status ? r.response_status[0] : undefined,
        request_method: r.request_method,
        setup: r.setup === true
      }))
    })
  }
}

await runTests(selected, fetch, false, baseUrl.replace(/\/+$/, ''))
process.stdout.write(JSON.stringify({ results: getResults(), uuids: testUUIDs, tests: meta }))
