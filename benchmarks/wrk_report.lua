-- wrk script of the benchmarks (benchmarks/http.py).
-- BENCH_METHOD (GET or POST) and BENCH_BODY choose the request; the Cookie header comes
-- from wrk's -H. Counts responses by status and 2xx answers whose X-Bench-Auth is not "1"
-- (the request was no longer logged in), then prints one line with the whole latency
-- histogram (so that runs can be merged exactly):
--   BENCH_JSON {"requests": ..., "hist": [[microseconds, count], ...], "statuses": {...}, ...}

local method = os.getenv("BENCH_METHOD") or "GET"
wrk.method = method
if method == "POST" then
  wrk.body = os.getenv("BENCH_BODY") or ""
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  anonymous = 0
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status >= 200 and status < 300 and headers["X-Bench-Auth"] ~= "1" then
    anonymous = anonymous + 1
  end
end

function done(summary, latency, requests)
  local counts = {}
  local anon = 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
    anon = anon + thread:get("anonymous")
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%s": %d', status, n))
  end
  local hist = {}
  for i = 1, #latency do
    local value, count = latency(i)
    table.insert(hist, string.format("[%d, %d]", value, count))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"statuses": {%s}, "anonymous": %d, "hist": [%s]}\n',
    summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ", "), anon, table.concat(hist, ", ")))
end
