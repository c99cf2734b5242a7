-- wrk script of the benchmarks (benchmarks/http.py).
-- BENCH_METHOD (GET or POST) and BENCH_BODY choose the request. BENCH_COOKIES holds one
-- Cookie header per line, one per connection (a session logged in for each): wrk runs one
-- connection per thread (-t = -c), and each thread keeps a cookie jar, sending back the
-- cookies its responses set, as a browser would. (wrk hands a script only the last header
-- of a name: the bench site lists every cookie a response sets in X-Bench-Cookies, see
-- benchmarks/site/middleware.py.) Counts responses by status and 2xx answers whose
-- X-Bench-Auth is not "1" (the request was no longer logged in), then prints one line with
-- the whole latency histogram (so that runs can be merged exactly):
--   BENCH_JSON {"requests": ..., "hist": [[microseconds, count], ...], "statuses": {...}, ...}

local method = os.getenv("BENCH_METHOD") or "GET"
wrk.method = method
if method == "POST" then
  wrk.body = os.getenv("BENCH_BODY") or ""
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end

local threads = {}
local initial = {}
for line in string.gmatch(os.getenv("BENCH_COOKIES") or "", "[^\n]+") do
  table.insert(initial, line)
end

function setup(thread)
  table.insert(threads, thread)
  if #initial > 0 then
    thread:set("cookies", initial[(#threads - 1) % #initial + 1])
  end
end

function init(args)
  statuses = {}
  anonymous = 0
  jar = {}
  order = {}
  for pair in string.gmatch(cookies or "", "[^;]+") do
    local name, value = string.match(pair, "^%s*([^=]+)=(.*)$")
    if name then
      jar[name] = value
      table.insert(order, name)
    end
  end
  header()
end

function keep(list)
  for pair in string.gmatch(list, "[^;]+") do
    local name, value = string.match(pair, "^%s*([^=]+)=(.*)$")
    if name then
      if jar[name] == nil then
        table.insert(order, name)
      end
      jar[name] = value ~= "" and value  -- false: deleted
    end
  end
end

function header()
  local parts = {}
  for _, name in ipairs(order) do
    if jar[name] then
      table.insert(parts, name .. "=" .. jar[name])
    end
  end
  cookies = table.concat(parts, "; ")  -- read back by done(), for the next run
end

function request()
  local headers = {}
  for k, v in pairs(wrk.headers) do
    headers[k] = v
  end
  headers["Cookie"] = cookies
  return wrk.format(nil, nil, headers, nil)
end

function response(status, headers, body)
  local set = headers["X-Bench-Cookies"]
  if set then
    keep(set)
    header()
  end
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
  for i, thread in ipairs(threads) do
    io.write(string.format("BENCH_JAR %d %s\n", i, thread:get("cookies") or ""))
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
