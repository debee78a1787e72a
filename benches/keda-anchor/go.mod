module keda-anchor

go 1.19
