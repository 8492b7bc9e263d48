-- wrk script for the benchmark harness.
--   BENCH_ENDPOINT  noop | get | page | insert | touch | mixed
--   BENCH_ID_MIN, BENCH_IDS  ids of GET and touch are drawn from BENCH_ID_MIN..BENCH_IDS
--                   (default 1..10000)
--   BENCH_MAX       stop after this many responses (0: run for the -d duration) and
--                   create the file BENCH_DONE_FILE
-- done() prints one line "BENCH_JSON {...}" with the counts and latency percentiles.

local endpoint = os.getenv("BENCH_ENDPOINT") or "noop"
local id_min = tonumber(os.getenv("BENCH_ID_MIN") or "1")
local ids = tonumber(os.getenv("BENCH_IDS") or "10000")
local max_responses = tonumber(os.getenv("BENCH_MAX") or "0")
local json_headers = { ["Content-Type"] = "application/json" }
local counter = 0
local responses = 0
local mixed = { "noop", "get", "page", "insert", "touch" }

math.randomseed(20240601)

local function build(kind)
   if kind == "noop" then
      return wrk.format("GET", "/noop")
   elseif kind == "get" then
      return wrk.format("GET", "/users/" .. math.random(id_min, ids))
   elseif kind == "page" then
      return wrk.format("GET", "/users?limit=50")
   elseif kind == "insert" then
      counter = counter + 1
      local body = string.format('{"name":"bench %d","email":"bench%d@example.com"}', counter, counter)
      return wrk.format("POST", "/users", json_headers, body)
   elseif kind == "touch" then
      return wrk.format("POST", "/users/" .. math.random(id_min, ids) .. "/touch")
   end
   error("unknown BENCH_ENDPOINT " .. kind)
end

if endpoint == "noop" then
   -- A fixed request: wrk sends it without calling Lua for each request.
   wrk.path = "/noop"
elseif endpoint == "page" then
   wrk.path = "/users?limit=50"
else
   request = function()
      if endpoint == "mixed" then
         counter = counter + 1
         return build(mixed[(counter % #mixed) + 1])
      end
      return build(endpoint)
   end
end

if max_responses > 0 then
   -- wrk's main thread sleeps for the whole -d duration even after thread:stop(), so
   -- the harness waits for this file and then ends wrk with SIGINT (done() still runs).
   local done_file = os.getenv("BENCH_DONE_FILE")
   response = function(status, headers, body)
      responses = responses + 1
      if responses == max_responses then
         wrk.thread:stop()
         if done_file then
            local marker = io.open(done_file, "w")
            marker:close()
         end
      end
   end
end

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
