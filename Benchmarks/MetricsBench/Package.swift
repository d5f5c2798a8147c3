// swift-tools-version:6.2
// Cost per recorded measurement: YoMoMetrics against swift-prometheus, in one
// run. A package of its own (like Fuzz/), so that swift-prometheus stays out of
// swift-yomo's dependency graph.
//
//   cd Benchmarks/MetricsBench && swift run -c release metrics-bench
import PackageDescription

let package = Package(
    name: "metrics-bench",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "swift-yomo", path: "../.."),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
    ],
    targets: [
        .executableTarget(
            name: "metrics-bench",
            dependencies: [
                .product(name: "YoMoMetrics", package: "swift-yomo"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        )
    ]
)
