-- Random attachment ids with the key of their workspace. The data layout is fixed by
-- bench/run.py: attachment i (0-based) belongs to workspace i // per_workspace, whose
-- key is keys[workspace + 1]; ids are 00000000-0000-4000-8000-<i as 12 hex digits>.
local data = dofile(os.getenv("BENCH_DATA"))
local keys, count, per_workspace = data.keys, data.count, data.per_workspace

-- Seeds from /dev/urandom: the main state's math.random is never seeded, so every wrk run
-- replayed the same ids, and a "cold" run after its warm-up mostly hit the caches.
local urandom = assert(io.open("/dev/urandom", "rb"))

function setup(thread)
  local a, b, c = urandom:read(3):byte(1, 3)
  thread:set("seed", a * 65536 + b * 256 + c)
end

function init(args)
  math.randomseed(seed)
end

function request()
  local i = math.random(0, count - 1)
  local key = keys[math.floor(i / per_workspace) + 1]
  local path = string.format("/api/v1/attachments/00000000-0000-4000-8000-%012x/download", i)
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. key })
end

function done(summary, latency, requests)
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
