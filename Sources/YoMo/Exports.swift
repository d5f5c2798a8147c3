// `import YoMo` is all a stream function needs: frames and metadata, TLS and QUIC
// settings, and the tracer and meter providers come with it.
@_exported public import YoMoQUIC
@_exported public import YoMoTracing
@_exported public import YoMoMetrics
@_exported public import YoMoWire
