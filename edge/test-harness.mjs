// Runs the built worker (edge/build) in workerd through Miniflare, for the end-to-end tests in
// tests/. Bindings come as JSON in EDGE_BINDINGS; an entry whose value is `{ simple: { limit,
// period } }` becomes a rate-limiting binding, as `[[ratelimits]]` in wrangler.toml declares one.
// The worker's URL is printed as "READY <url>". EDGE_CACHE_DIR, when set, persists the Cache API
// there, so a second instance (a fresh isolate) finds what the first stored; EDGE_SCRIPT, when
// set, runs that module instead of the built worker (a stand-in for another Worker of the zone).
// Stops when its standard input closes (the test process went away) or on SIGTERM.
import { Miniflare, Log, LogLevel } from "miniflare";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const bindings = {};
const ratelimits = {};
for (const [name, value] of Object.entries(JSON.parse(process.env.EDGE_BINDINGS ?? "{}"))) {
  if (value !== null && typeof value === "object" && "simple" in value) {
    ratelimits[name] = value;
  } else {
    bindings[name] = value;
  }
}
const script = process.env.EDGE_SCRIPT
  ? { script: process.env.EDGE_SCRIPT }
  : {
      scriptPath: path.join(here, "build", "index.js"),
      modulesRoot: path.join(here, "build"),
      modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
    };
const mf = new Miniflare({
  modules: true,
  ...script,
  ...(process.env.EDGE_CACHE_DIR ? { cachePersist: process.env.EDGE_CACHE_DIR } : {}),
  compatibilityDate: "2026-04-01",
  bindings,
  ratelimits,
  host: "127.0.0.1",
  port: 0,
  cf: false,
  log: new Log(LogLevel.INFO),
});

const url = await mf.ready;
console.log(`READY ${url.href}`);

const stop = async () => {
  await mf.dispose();
  process.exit(0);
};
process.stdin.on("end", stop);
process.stdin.resume();
process.on("SIGTERM", stop);
