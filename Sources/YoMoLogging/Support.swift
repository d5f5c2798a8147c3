// ConditionLock, startThread, the clocks and Duration.clampedNanoseconds come
// from YoMoTracing (package access).
