import Glibc
import Testing

@testable import YoMoMetrics

/// The process's own metrics (`ProcessMetrics`), read from `/proc/self`.
@Suite("Process metrics")
struct ProcessMetricsTests {
    @Test("/proc/<pid>/stat's fields: CPU ticks to seconds, threads, virtual bytes, resident pages to bytes")
    func parsesStat() throws {
        // Fields 3 to 24 after the command: utime 14, stime 15, num_threads 20, vsize 23, rss 24.
        var fields = (3...24).map { "\($0 * 11)" }
        fields[0] = "S"
        fields[14 - 3] = "250"
        fields[15 - 3] = "50"
        fields[20 - 3] = "7"
        fields[23 - 3] = "1048576"
        fields[24 - 3] = "300"
        let sample = try #require(ProcessMetrics.parse(stat: " " + fields.joined(separator: " ") + " 0 0", ticksPerSecond: 100, pageSize: 4096))
        #expect(sample == ProcessMetrics.Sample(residentBytes: 300 * 4096, virtualBytes: 1_048_576, userSeconds: 2.5, systemSeconds: 0.5, threads: 7))
        #expect(ProcessMetrics.parse(stat: " S 1 2", ticksPerSecond: 100, pageSize: 4096) == nil, "too few fields")
        #expect(ProcessMetrics.parse(stat: " " + fields.joined(separator: " "), ticksPerSecond: 0, pageSize: 4096) == nil)
    }

    @Test("on /metrics: resident memory as the kernel counts it, CPU time by mode, threads, and file descriptors as they open")
    func liveOnMetrics() throws {
        let provider = MeterProvider(configuration: .init(serviceName: "self", environment: [:]))
        ProcessMetrics.observe(provider)
        func page() -> [ScrapedSample] {
            PrometheusTextParser.parse(PrometheusExposition.render(provider.collect(), resource: provider.configuration.resource, format: .text))
        }
        func value(_ samples: [ScrapedSample], _ name: String, _ labels: [String: String] = [:]) -> Double? {
            samples.first { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }?.value
        }
        let samples = page()
        // VmRSS from /proc/self/status, in KiB: the same count statm and stat give.
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") })
        let kib = try #require(Double(line.split(separator: " ").dropFirst().first ?? ""))
        let resident = try #require(value(samples, "process_memory_usage_bytes"))
        #expect(resident > kib * 1024 / 2 && resident < kib * 1024 * 2, "\(resident) bytes against VmRSS \(kib) KiB")
        #expect((value(samples, "process_memory_virtual_bytes") ?? 0) >= resident)
        #expect((value(samples, "process_cpu_time_seconds_total", ["cpu_mode": "user"]) ?? 0) > 0)
        #expect(value(samples, "process_cpu_time_seconds_total", ["cpu_mode": "system"]) != nil)
        #expect((value(samples, "process_thread_count") ?? 0) >= 1)
        let before = try #require(value(samples, "process_open_file_descriptor_count"))
        #expect(before >= 3, "stdin, stdout, stderr")
        var pipes: [Int32] = []
        for _ in 0..<20 {
            var ends: [Int32] = [0, 0]
            #expect(pipe(&ends) == 0)
            pipes += ends
        }
        defer { for descriptor in pipes { close(descriptor) } }
        // 40 more; other tests of this process may open or close a few meanwhile.
        let after = try #require(value(page(), "process_open_file_descriptor_count"))
        #expect(after >= before + 30, "\(before) → \(after)")
    }
}
