#if canImport(Glibc)
import Glibc
#endif
import YoMoTracing

/// The process's own use of memory, CPU, threads and file descriptors, named
/// as the OpenTelemetry semantic conventions name them (`process.*`), read
/// from `/proc/self` when metrics are collected. Registered once per process
/// by `YoMoMetrics.bootstrap`: a zipper's memory under big frames, or a
/// function's file descriptors, show beside its data path.
public enum ProcessMetrics {
    /// What `/proc/self` says now; nil where it cannot be read (not Linux).
    struct Sample: Equatable {
        var residentBytes: Double
        var virtualBytes: Double
        var userSeconds: Double
        var systemSeconds: Double
        var threads: Double
    }

    public static func observe(_ provider: MeterProvider) {
        let meter = provider.meter("process")
        @Sendable func one(_ value: Double?) -> [(MetricAttributes, Double)] { value.map { [(MetricAttributes(), $0)] } ?? [] }
        meter.observableGauge("process.memory.usage", unit: "By", description: "Resident memory of the process (RSS).") {
            one(sample()?.residentBytes)
        }
        meter.observableGauge("process.memory.virtual", unit: "By", description: "Virtual memory the process has mapped.") {
            one(sample()?.virtualBytes)
        }
        meter.observableCounter("process.cpu.time", unit: "s", description: "CPU time the process used, by mode.") {
            guard let sample = sample() else { return [] }
            let user: MetricAttributes = ["cpu.mode": "user"], system: MetricAttributes = ["cpu.mode": "system"]
            return [(user, sample.userSeconds), (system, sample.systemSeconds)]
        }
        meter.observableGauge("process.thread.count", unit: "{thread}", description: "Threads of the process.") {
            one(sample()?.threads)
        }
        meter.observableGauge(
            "process.open_file_descriptor.count", unit: "{file_descriptor}", description: "File descriptors the process has open."
        ) {
            one(openFileDescriptors().map(Double.init))
        }
    }

    /// `/proc/self/stat`: the fields after the command's closing parenthesis
    /// (a command may hold spaces and parentheses).
    static func sample() -> Sample? {
        #if os(Linux)
        guard let text = readSmallFile("/proc/self/stat"), let close = text.lastIndex(of: ")") else { return nil }
        return parse(stat: String(text[text.index(after: close)...]), ticksPerSecond: Double(sysconf(Int32(_SC_CLK_TCK))),
                     pageSize: Double(sysconf(Int32(_SC_PAGESIZE))))
        #else
        return nil
        #endif
    }

    /// Fields 3 onwards of `/proc/<pid>/stat` (proc(5)): utime 14, stime 15,
    /// num_threads 20, vsize 23 (bytes), rss 24 (pages).
    static func parse(stat afterCommand: String, ticksPerSecond: Double, pageSize: Double) -> Sample? {
        let fields = afterCommand.split(separator: " ")
        func field(_ number: Int) -> Double? {
            let index = number - 3
            return fields.indices.contains(index) ? Double(fields[index]) : nil
        }
        guard ticksPerSecond > 0, let user = field(14), let system = field(15), let threads = field(20),
              let virtual = field(23), let resident = field(24)
        else { return nil }
        return Sample(
            residentBytes: resident * pageSize, virtualBytes: virtual, userSeconds: user / ticksPerSecond,
            systemSeconds: system / ticksPerSecond, threads: threads)
    }

    /// Entries of `/proc/self/fd`, less the one the listing itself opens.
    static func openFileDescriptors() -> Int? {
        #if os(Linux)
        guard let directory = opendir("/proc/self/fd") else { return nil }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            let isDot = withUnsafeBytes(of: entry.pointee.d_name) { $0.first == UInt8(ascii: ".") }
            if !isDot { count += 1 }
        }
        return max(0, count - 1)
        #else
        return nil
        #endif
    }
}
